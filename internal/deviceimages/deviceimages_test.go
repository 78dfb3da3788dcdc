package deviceimages_test

import (
	"testing"

	"github.com/flock-io/flock-api/internal/deviceimages"
)

func TestRepository(t *testing.T) {
	for in, want := range map[string]string{
		"acme/sensors/hello":                                     "acme/sensors/hello",
		"acme/sensors/hello:1.4":                                 "acme/sensors/hello",
		"registry.example.com/acme/sensors/hello:1.4":            "acme/sensors/hello",
		"registry.example.com:5000/acme/sensors/hello@sha256:ab": "acme/sensors/hello",
		"localhost/acme/f/s":                                     "acme/f/s",
	} {
		if got := deviceimages.Repository(in); got != want {
			t.Errorf("Repository(%q) = %q, want %q", in, got, want)
		}
	}
}
