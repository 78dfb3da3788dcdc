package logging_test

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/flock-io/flock-api/internal/http/reqinfo"
	"github.com/flock-io/flock-api/internal/logging"
)

func TestRequestIDOnEveryRecord(t *testing.T) {
	var buf bytes.Buffer
	log, err := logging.New(&buf, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	ctx := reqinfo.With(context.Background(), "abc-123")
	log.With("component", "test").InfoContext(ctx, "hello")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["request_id"] != "abc-123" || rec["component"] != "test" {
		t.Fatalf("record = %v", rec)
	}
	buf.Reset()
	log.InfoContext(context.Background(), "outside a request")
	if bytes.Contains(buf.Bytes(), []byte("request_id")) {
		t.Fatalf("request_id outside a request: %s", buf.String())
	}
}

func TestRejectsUnknownSettings(t *testing.T) {
	if _, err := logging.New(nil, "xml", "info"); err == nil {
		t.Error("format xml accepted")
	}
	if _, err := logging.New(nil, "json", "loud"); err == nil {
		t.Error("level loud accepted")
	}
}
