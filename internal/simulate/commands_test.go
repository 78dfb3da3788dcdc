package simulate_test

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/flock-io/flock-api/internal/simulate"
	"github.com/flock-io/flock-api/internal/testutil"
)

// TestSimulatedCommands sends a simulated device each command type through
// the API on the whole platform (--target=all) and watches what became of
// each: identify succeeds, restart_service restarts a service it runs and
// fails for one it does not, and reboot ends the connection and comes back
// with a new connection_seq before it succeeds.
func TestSimulatedCommands(t *testing.T) {
	port := freePort(t)
	f := newFleetOn(t, "--target=all", "--mqtt-listen=127.0.0.1:"+port, "--mqtt-public-url=mqtt://127.0.0.1:"+port)
	r := start(simulate.Config{API: f.srv.URL, ProvisioningKey: f.provKey, Devices: 1,
		SummaryEvery: 50 * time.Millisecond, Out: io.Discard, Log: testLog(t)})
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_, _ = r.stop(t)
		}
	})
	f.finalRelease(t)
	testutil.Eventually(t, "the device running the release", testutil.Until(func() bool { return r.summary().UpdatesDone == 1 }))
	// The API takes commands once the device reported its agent version.
	var device string
	testutil.Eventually(t, "the device's agent version in the API", func() error {
		items, _ := f.must(t, 200, "GET", "/v1/orgs/"+f.org+"/devices", nil)["items"].([]any)
		if len(items) != 1 {
			return fmt.Errorf("%d devices", len(items))
		}
		d := items[0].(map[string]any)
		device = d["id"].(string)
		if st, _ := d["reported_state"].(map[string]any); st == nil || st["agent_version"] != "flock-simulate "+simulate.AgentVersion {
			return fmt.Errorf("reported state %v", d["reported_state"])
		}
		return nil
	})
	history := func() []any {
		items, _ := f.must(t, 200, "GET", "/v1/devices/"+device+"/connectivity", nil)["items"].([]any)
		return items
	}
	before := history()
	firstSeq := before[0].(map[string]any)["connection_seq"].(float64)

	send := func(body map[string]any) string {
		return f.must(t, 201, "POST", "/v1/devices/"+device+"/commands", body)["id"].(string)
	}
	finished := func(id string) map[string]any {
		var c map[string]any
		testutil.Eventually(t, "command "+id+" finished", func() error {
			c = f.must(t, 200, "GET", "/v1/commands/"+id, nil)
			if s := c["status"]; s != "succeeded" && s != "failed" {
				return fmt.Errorf("status %v", s)
			}
			return nil
		})
		return c
	}
	for _, c := range []struct {
		name   string
		body   map[string]any
		status string
		error  string
	}{
		{"identify", map[string]any{"type": "identify"}, "succeeded", ""},
		{"restart a service it runs", map[string]any{"type": "restart_service", "service": "app"}, "succeeded", ""},
		{"restart a service it does not run", map[string]any{"type": "restart_service", "service": "db"}, "failed", `no service named "db" runs on this device`},
		{"reboot", map[string]any{"type": "reboot"}, "succeeded", ""},
	} {
		got := finished(send(c.body))
		if got["status"] != c.status || got["delivered_at"] == nil || (c.error != "" && got["error"] != c.error) {
			t.Errorf("%s: %v, want %s %s", c.name, got, c.status, c.error)
		}
	}

	// The reboot: the first connection's disconnect and a connect with a
	// newer connection_seq. Not necessarily in that order of time: the
	// broker may take the new connection before it has closed the old one
	// (seen under load), which is what connection_seq orders.
	testutil.Eventually(t, "the reboot in the connectivity history", func() error {
		h := history()
		if len(h) < len(before)+2 {
			return fmt.Errorf("history %v", h)
		}
		var oldGone, newUp bool
		for _, e := range h[:len(h)-len(before)] {
			ev := e.(map[string]any)
			seq := ev["connection_seq"].(float64)
			oldGone = oldGone || (ev["event"] == "disconnected" && seq == firstSeq)
			newUp = newUp || (ev["event"] == "connected" && seq > firstSeq)
		}
		if !oldGone || !newUp {
			return fmt.Errorf("history %v", h)
		}
		return nil
	})
	testutil.Eventually(t, "the device online again", testutil.Until(func() bool {
		return f.must(t, 200, "GET", "/v1/devices/"+device, nil)["online"] == true
	}))

	sum, err := r.stop(t)
	stopped = true
	if err != nil {
		t.Fatalf("simulate: %v", err)
	}
	if sum.CommandsSucceeded != 3 || sum.CommandsFailed != 1 || sum.Reconnects < 1 || sum.PublishRefused != 0 || sum.PublishErrors != 0 {
		t.Errorf("summary: %+v", sum)
	}
	if sum.Published.CommandResults < 8 {
		t.Errorf("%d command results published, want at least received and an outcome for each of 4", sum.Published.CommandResults)
	}
}
