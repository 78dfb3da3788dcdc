package buildsrc

import (
	"context"
	"errors"
	"io/fs"
	"reflect"
	"strings"
	"testing"
)

// Interpolation runs with an empty environment, as docker compose would
// with no variables set.
func TestComposeInterpolation(t *testing.T) {
	doc := `
services:
  web:
    image: ${IMAGE:-nginx}:${TAG-1.25}
    restart: no
    environment:
      UNSET: ${A}
      DEFAULT: ${A:-x}
      DASH: ${A-y}
      PLUS: ${A:+z}
      ESCAPED: $$HOME
      BARE: $A-suffix
`
	services, err := parseCompose("compose.yml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	s := services[0]
	if s.Image != "nginx:1.25" || s.Restart != "no" {
		t.Errorf("image %q restart %q", s.Image, s.Restart)
	}
	want := map[string]string{"UNSET": "", "DEFAULT": "x", "DASH": "y", "PLUS": "", "ESCAPED": "$HOME", "BARE": "-suffix"}
	if !reflect.DeepEqual(s.Environment, want) {
		t.Errorf("environment %v, want %v", s.Environment, want)
	}
}

func TestComposePorts(t *testing.T) {
	for _, ok := range []string{"80", "8080:80", "8080:80/udp", "127.0.0.1:8080:80", "[::1]:8080:80/tcp", "3000-3002:4000-4002", "127.0.0.1::80", "9000-9001"} {
		if err := checkPort(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "0", "70000", "a:80", "80/icmp", "1-2:3-5", "300.1.1.1:80:80", "5-3"} {
		if err := checkPort(bad); err == nil {
			t.Errorf("%s: accepted", bad)
		}
	}
}

func TestErrorText(t *testing.T) {
	_, err := Scan(context.Background(), writeTar(t, file("compose.yml", "services: [\n")), Options{})
	var e *Error
	if !errors.As(err, &e) || e.Unwrap() == nil {
		t.Fatalf("want an *Error with a cause, got %#v", err)
	}
	if !strings.HasPrefix(err.Error(), "compose_invalid: The compose file compose.yml is not valid YAML: yaml: line 1") {
		t.Errorf("Error() = %q", err.Error())
	}

	_, err = Scan(context.Background(), "/nonexistent/upload", Options{})
	if errors.As(err, &e) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a missing spool file is not bad input: %v", err)
	}
}
