package simulate_test

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/simulate"
	"github.com/flock-io/flock-api/internal/testutil"
)

// TestRolloutEndToEnd takes simulated devices through rollouts on the whole
// platform in one process (--target=all: API, broker, ingester, scheduler,
// kfake): a release goes through three groups, the second trips its error
// threshold (the devices the simulator fails) and pauses the rollout, a
// person resumes it and it finishes; then a second rollout is aborted with
// rollback and every device it touched reports its previous release again.
func TestRolloutEndToEnd(t *testing.T) {
	port := freePort(t)
	f := newFleetOn(t, "--target=all", "--mqtt-listen=127.0.0.1:"+port, "--mqtt-public-url=mqtt://127.0.0.1:"+port)
	relA := f.finalRelease(t)
	const n, share = 12, 0.3
	r := start(simulate.Config{API: f.srv.URL, ProvisioningKey: f.provKey, Devices: n, Rate: 400, StepTime: 5 * time.Millisecond,
		FailShare: share, SummaryEvery: 100 * time.Millisecond, Out: io.Discard, Log: testLog(t)})
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_, _ = r.stop(t)
		}
	})

	devices := func() map[string]map[string]any {
		out := map[string]map[string]any{}
		for _, it := range f.must(t, 200, "GET", "/v1/orgs/"+f.org+"/devices?limit=100", nil)["items"].([]any) {
			d := it.(map[string]any)
			out[d["id"].(string)] = d
		}
		return out
	}
	running := func(d map[string]any) string {
		st, _ := d["reported_state"].(map[string]any)
		rel, _ := st["running_release_id"].(string)
		return rel
	}
	testutil.Eventually(t, "every device running release A", testutil.Until(func() bool {
		ds := devices()
		if len(ds) != n {
			return false
		}
		for _, d := range ds {
			if running(d) != relA {
				return false
			}
		}
		return true
	}))
	var ids []uuid.UUID
	for id := range devices() {
		ids = append(ids, uuid.MustParse(id))
	}
	slices.SortFunc(ids, func(a, b uuid.UUID) int { return strings.Compare(a.String(), b.String()) })

	// The fleet is pinned to A, then releases are made until one fails on
	// at least two devices and runs on at least eight (the simulator's
	// choice is a hash of device and release).
	f.must(t, 200, "PATCH", "/v1/fleets/"+f.fleet, map[string]any{"pinned_release_id": relA})
	var relB string
	var failing, fine []uuid.UUID
	for i := 0; relB == ""; i++ {
		if i == 100 {
			t.Fatal("no release of 100 fails on 2 to 4 of 12 devices")
		}
		rel := f.finalRelease(t)
		failing, fine = nil, nil
		for _, id := range ids {
			if simulate.Fails(id, uuid.MustParse(rel), share) {
				failing = append(failing, id)
			} else {
				fine = append(fine, id)
			}
		}
		if len(failing) >= 2 && len(failing) <= 4 {
			relB = rel
		}
	}
	// Three groups: three healthy canaries, then every failing device with
	// two healthy ones, then the rest.
	ring := map[uuid.UUID]string{}
	for i, id := range fine {
		switch {
		case i < 3:
			ring[id] = "canary"
		case i < 5:
			ring[id] = "early"
		}
	}
	for _, id := range failing {
		ring[id] = "early"
	}
	for id, tag := range ring {
		f.must(t, 200, "PATCH", "/v1/devices/"+id.String(), map[string]any{"tags": map[string]any{"ring": tag}})
	}
	early := len(failing) + 2
	rollout := f.must(t, 201, "POST", "/v1/fleets/"+f.fleet+"/rollouts", map[string]any{
		"release_id": relB, "settle_seconds": 1,
		"groups": []any{
			map[string]any{"name": "canary", "count": 3, "tags": map[string]any{"ring": "canary"}},
			map[string]any{"name": "early", "count": early, "tags": map[string]any{"ring": "early"},
				"error_threshold": map[string]any{"percent": 20, "min_sample": 2, "action": "pause"}},
			map[string]any{"name": "everyone"},
		}})["id"].(string)
	get := func(id string) map[string]any { return f.must(t, 200, "GET", "/v1/rollouts/"+id, nil) }
	groupCounts := func(ro map[string]any, g int) map[string]any {
		return ro["groups"].([]any)[g].(map[string]any)["counts"].(map[string]any)
	}
	f.must(t, 200, "POST", "/v1/rollouts/"+rollout+"/start", nil)

	var paused map[string]any
	testutil.Eventually(t, "the early group trips its error threshold and pauses the rollout", testutil.Until(func() bool {
		paused = get(rollout)
		return paused["state"] == "paused"
	}))
	if reason := paused["state_reason"].(string); !strings.Contains(reason, "error threshold") {
		t.Fatalf("paused because %q, want the error threshold", reason)
	}
	if paused["current_group"] != float64(1) || groupCounts(paused, 0)["succeeded"] != float64(3) {
		t.Fatalf("paused in group %v with canary counts %v, want group 1 after 3 canaries succeeded", paused["current_group"], groupCounts(paused, 0))
	}
	if c := groupCounts(paused, 2); c["pending"] != float64(n-3-early) {
		t.Fatalf("the last group while paused: %v, want every device pending", c)
	}
	// Paused, nothing more is targeted: the last group's devices still run A.
	for _, id := range fine[5:] {
		if got := running(devices()[id.String()]); got != relA {
			t.Fatalf("device %s of the last group runs %s while the rollout is paused", id, got)
		}
	}

	f.must(t, 200, "POST", "/v1/rollouts/"+rollout+"/resume", nil)
	var done map[string]any
	testutil.Eventually(t, "the rollout resumes and finishes", testutil.Until(func() bool {
		done = get(rollout)
		return done["state"] == "finished"
	}))
	if c := done["counts"].(map[string]any); c["succeeded"] != float64(len(fine)) || c["failed"] != float64(len(failing)) {
		t.Fatalf("counts at the finish %v, want %d succeeded and %d failed", c, len(fine), len(failing))
	}
	if fl := f.must(t, 200, "GET", "/v1/fleets/"+f.fleet, nil); fl["pinned_release_id"] != relB {
		t.Fatalf("fleet after the finish %v, want pinned to B", fl)
	}
	testutil.Eventually(t, "every device reports B", testutil.Until(func() bool {
		for _, d := range devices() {
			if running(d) != relB {
				return false
			}
		}
		return true
	}))

	// A second rollout, aborted with rollback once its first group has
	// taken release C: the devices it touched go back to B.
	relC := f.finalRelease(t)
	second := f.must(t, 201, "POST", "/v1/fleets/"+f.fleet+"/rollouts", map[string]any{
		"release_id": relC, "settle_seconds": 3600,
		"groups": []any{map[string]any{"count": 4}, map[string]any{}}})["id"].(string)
	f.must(t, 200, "POST", "/v1/rollouts/"+second+"/start", nil)
	testutil.Eventually(t, "the first group of the second rollout reports C", testutil.Until(func() bool {
		c := groupCounts(get(second), 0)
		return c["running"].(float64)+c["failed"].(float64) == 4
	}))
	aborted := f.must(t, 200, "POST", "/v1/rollouts/"+second+"/abort", map[string]any{"rollback": true})
	if aborted["state"] != "rolled_back" {
		t.Fatalf("abort with rollback: %v", aborted["state"])
	}
	touched := f.must(t, 200, "GET", "/v1/rollouts/"+second+"/devices?state=rolled_back", nil)["items"].([]any)
	if len(touched) != 4 {
		t.Fatalf("%d devices rolled back, want the first group's 4", len(touched))
	}
	testutil.Eventually(t, "every touched device reports B again", testutil.Until(func() bool {
		ds := devices()
		for _, it := range touched {
			if running(ds[it.(map[string]any)["device_id"].(string)]) != relB {
				return false
			}
		}
		return true
	}))
	// The rest were never targeted.
	for id, d := range devices() {
		if got := running(d); got != relB {
			t.Errorf("device %s runs %s, want B", id, got)
		}
	}
	sum, err := r.stop(t)
	stopped = true
	if err != nil {
		t.Fatalf("simulate: %v", err)
	}
	if sum.UpdatesFailed < int64(len(failing)) {
		t.Errorf("summary %s: want at least %d failed updates", sum, len(failing))
	}
}
