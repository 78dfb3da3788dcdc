package simulate_test

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/flock-io/flock-api/internal/simulate"
	"github.com/flock-io/flock-api/internal/testutil"
)

// TestSimulateAgainstAll runs the simulator against the whole platform in
// one process (--target=all: API, embedded broker, ingester, in-process KV,
// kfake, PostgreSQL telemetry) and checks what a user would see: devices
// registered and online with their live state, their connectivity history,
// a new release reaching every device as a nudge and being applied, and
// devices going offline when the simulator stops.
func TestSimulateAgainstAll(t *testing.T) {
	// The server's public URL (flock.test) does not resolve here, so the
	// test names the broker devices are told about.
	port := freePort(t)
	f := newFleetOn(t, "--target=all", "--mqtt-listen=127.0.0.1:"+port, "--mqtt-public-url=mqtt://127.0.0.1:"+port)
	const n = 5
	r := start(simulate.Config{API: f.srv.URL, ProvisioningKey: f.provKey, Devices: n, Rate: 25,
		SummaryEvery: 100 * time.Millisecond, Out: io.Discard, Log: testLog(t)})
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_, _ = r.stop(t)
		}
	})

	testutil.Eventually(t, "every device connected", testutil.Until(func() bool {
		select {
		case <-r.done:
			t.Fatalf("simulate ended: %v", r.err)
		default:
		}
		return r.summary().Connected == n
	}))
	testutil.Eventually(t, "every device online in the API with its live state", testutil.Until(func() bool {
		page := f.must(t, 200, "GET", "/v1/orgs/"+f.org+"/devices?online=true", nil)
		items, _ := page["items"].([]any)
		if len(items) != n {
			return false
		}
		for _, it := range items {
			d := it.(map[string]any)
			st, _ := d["reported_state"].(map[string]any)
			if d["last_seen_at"] == nil || st == nil || st["agent_version"] == nil {
				return false
			}
		}
		return true
	}))
	page := f.must(t, 200, "GET", "/v1/orgs/"+f.org+"/devices", nil)
	first := page["items"].([]any)[0].(map[string]any)["id"].(string)
	testutil.Eventually(t, "connectivity history of a device", testutil.Until(func() bool {
		h := f.must(t, 200, "GET", "/v1/devices/"+first+"/connectivity", nil)
		items, _ := h["items"].([]any)
		return len(items) >= 1 && items[0].(map[string]any)["event"] == "connected"
	}))

	release := f.finalRelease(t)
	testutil.Eventually(t, "the release applied on every device", testutil.Until(func() bool { return r.summary().UpdatesDone >= n }))
	// They report it over MQTT only; the list's filter reads PostgreSQL,
	// which the ingester keeps up to date.
	testutil.Eventually(t, "the device list finds every device running the release", testutil.Until(func() bool {
		page := f.must(t, 200, "GET", "/v1/orgs/"+f.org+"/devices?running_release_id="+release, nil)
		items, _ := page["items"].([]any)
		return len(items) == n
	}))

	sum, err := r.stop(t)
	stopped = true
	if err != nil {
		t.Fatalf("simulate: %v", err)
	}
	if sum.Registered != n || sum.PublishRefused != 0 || sum.PublishErrors != 0 || sum.ConnectRefused != 0 || sum.TargetErrors != 0 {
		t.Errorf("summary: %+v", sum)
	}
	if sum.NudgesReceived < n {
		t.Errorf("%d nudges received, want at least one per device", sum.NudgesReceived)
	}
	testutil.Eventually(t, "devices offline after a clean stop", testutil.Until(func() bool {
		page := f.must(t, 200, "GET", "/v1/orgs/"+f.org+"/devices?online=false", nil)
		items, _ := page["items"].([]any)
		return len(items) == n
	}))
	// The history is written beside the online flag, not before it.
	testutil.Eventually(t, "the disconnect in the connectivity history", func() error {
		h := f.must(t, 200, "GET", "/v1/devices/"+first+"/connectivity", nil)
		if items, _ := h["items"].([]any); len(items) < 2 || items[0].(map[string]any)["event"] != "disconnected" {
			return fmt.Errorf("history after stop: %v", items)
		}
		return nil
	})
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}
