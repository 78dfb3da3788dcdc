package system_test

import (
	"context"
	"net/http"
	"reflect"
	"runtime"
	"testing"

	"github.com/flock-io/flock-api/gen/client"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

func TestVersionGet(t *testing.T) {
	srv := apptest.Start(t, "--target=api")
	c, err := client.NewClientWithResponses(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.VersionGetWithResponse(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode() != http.StatusOK || resp.JSON200 == nil {
		t.Fatalf("status %d: %s", resp.StatusCode(), resp.Body)
	}
	v := resp.JSON200
	if !reflect.DeepEqual(v.Targets, []string{"api"}) {
		t.Errorf("targets = %v, want [api]", v.Targets)
	}
	if v.GoVersion != runtime.Version() || v.Version == "" || v.Commit == "" {
		t.Errorf("build facts = %+v", v)
	}
	// The template database holds every migration: the schema version is the
	// newest one, read from goose's table through sqlc.
	if v.Database.SchemaVersion < 1 || v.Database.ServerVersion == "" {
		t.Errorf("database = %+v", v.Database)
	}
	if resp.HTTPResponse.Header.Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id")
	}
}
