package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/flock-io/flock-api/handlers"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/testutil"
)

// An HTTP report reaches flock.device.state.v1 as an MQTT one does, so the
// scheduler and the streams see devices that report over HTTP; a retry of
// the same seq publishes again (the first publish may have failed after the
// state was stored), and a stale seq publishes nothing.
func TestHTTPReportsArePublished(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := bus.Open(ctx, bus.Config{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	e := startLiveServer(t, liveOptions{deps: func(_ *liveEnv, d *handlers.Deps) { d.Bus = b }})
	w := newWorld(t, e.srv).withFleet(t)
	tok := w.device.token(t, e.srv)

	var mu sync.Mutex
	var got []map[string]any
	consumeCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- b.Consume(consumeCtx, "test-http-reports", []string{bus.TopicDeviceState}, func(_ context.Context, recs []bus.Record) error {
			mu.Lock()
			defer mu.Unlock()
			for _, r := range recs {
				var m map[string]any
				if err := json.Unmarshal(r.Value, &m); err != nil {
					return err
				}
				m["key"] = string(r.Key)
				got = append(got, m)
			}
			return nil
		})
	}()
	t.Cleanup(func() { stop(); <-done })

	must(t, e.srv, 204, "PATCH", "/device/v1/state", tok, map[string]any{"seq": 3, "os_version": "v3", "agent_version": "1.2.0"})
	must(t, e.srv, 204, "PATCH", "/device/v1/state", tok, map[string]any{"seq": 3, "os_version": "v3", "agent_version": "1.2.0"})
	must(t, e.srv, 409, "PATCH", "/device/v1/state", tok, map[string]any{"seq": 2})
	must(t, e.srv, 204, "PATCH", "/device/v1/state", tok, map[string]any{"seq": 4, "os_version": "v4"})

	var seqs []float64
	// Records of one device keep their order (one key, one partition), so
	// once seq 4 is in, anything the refused report published would be too.
	testutil.Eventually(t, "the record of seq 4", func() error {
		mu.Lock()
		defer mu.Unlock()
		seqs = seqs[:0]
		for _, m := range got {
			seqs = append(seqs, m["state"].(map[string]any)["seq"].(float64))
		}
		if len(seqs) == 0 || seqs[len(seqs)-1] != 4 {
			return fmt.Errorf("records of seqs %v", seqs)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 || seqs[0] != 3 || seqs[1] != 3 || seqs[2] != 4 {
		t.Fatalf("state seqs on the bus = %v, want [3 3 4]", seqs)
	}
	dev := w.device.id.String()
	for _, m := range got {
		if m["key"] != dev || m["device_id"] != dev || m["org_id"] != w.org || m["fleet_id"] != w.fleet || m["received_at"] == nil {
			t.Fatalf("record %v: want key, device_id %s, org_id %s, fleet_id %s, received_at", m, dev, w.org, w.fleet)
		}
	}
	if v := got[2]["state"].(map[string]any)["os_version"]; v != "v4" {
		t.Fatalf("last record's os_version = %v, want v4", v)
	}
}
