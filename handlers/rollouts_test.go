package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// withRelease2 pins the fleet to its release and adds a second final
// release to roll out; it returns the new release.
func (w *world) withRelease2() string {
	must(w.t, w.srv, 200, "PATCH", "/v1/fleets/"+w.fleet, w.owner, map[string]any{"pinned_release_id": w.release})
	b := w.releaseBody(w.fleet, "final")
	b["version"] = "2.0"
	return must(w.t, w.srv, 201, "POST", "/v1/fleets/"+w.fleet+"/releases", w.owner, b)["id"].(string)
}

// addDevices registers n more devices in the world's fleet.
func (w *world) addDevices(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		d := newDevice(w.t)
		must(w.t, w.srv, 201, "POST", "/device/v1/register", "", d.registration(w.provKey))
		ids[i] = d.id.String()
	}
	return ids
}

// rolloutIn creates a rollout of a second release in two groups and brings
// it to state by the API (or, for waiting_for_approval, which only the
// scheduler reaches, by setting it in the database).
func (w *world) rolloutIn(state string) string {
	t := w.t
	rel := w.withRelease2()
	id := must(t, w.srv, 201, "POST", "/v1/fleets/"+w.fleet+"/rollouts", w.owner, map[string]any{
		"release_id": rel, "groups": []any{map[string]any{"percent": 50}, map[string]any{}},
	})["id"].(string)
	act := func(a string) { must(t, w.srv, 200, "POST", "/v1/rollouts/"+id+"/"+a, w.owner, nil) }
	switch state {
	case "ready":
	case "running":
		act("start")
	case "paused":
		act("start")
		act("pause")
	case "waiting_for_approval":
		act("start")
		if _, err := w.srv.Pool(t).Exec(context.Background(), `UPDATE rollouts SET state = 'waiting_for_approval' WHERE id = $1`, id); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("rolloutIn(%s)", state)
	}
	return id
}

// rolloutForReads is a ready rollout in the world, made once.
func (w *world) rolloutForReads() string {
	if w.readRollout == "" {
		w.readRollout = w.rolloutIn("ready")
	}
	return w.readRollout
}

// groupForReads is a device group in the world, made once.
func (w *world) groupForReads() string {
	if w.readGroup == "" {
		w.readGroup = must(w.t, w.srv, 201, "POST", "/v1/orgs/"+w.org+"/device-groups", w.owner,
			map[string]any{"name": "lab", "tags": map[string]any{"site": "lab"}})["id"].(string)
	}
	return w.readGroup
}

func field(out map[string]any) string {
	errs, _ := out["errors"].([]any)
	if len(errs) == 0 {
		return ""
	}
	f, _ := errs[0].(map[string]any)["field"].(string)
	return f
}

// The rules refuse a rollout that cannot be, naming the field.
func TestRolloutCreateRefusesBadInput(t *testing.T) {
	srv := apptest.Start(t, "--target=api,registry-proxy")
	w := newWorld(t, srv).withFleet(t)
	w.addDevices(3) // four devices in all
	rel2 := w.withRelease2()
	draft := must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/releases", w.owner, w.releaseBody(w.fleet, "draft"))["id"].(string)
	other := must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/fleets", w.owner, map[string]any{"name": "other", "architecture": "amd64"})["id"].(string)
	otherRel := must(t, srv, 201, "POST", "/v1/fleets/"+other+"/releases", w.owner, w.releaseBody(other, "final"))["id"].(string)
	groups := []any{map[string]any{"percent": 50}, map[string]any{}}
	with := func(k string, v any) map[string]any {
		b := map[string]any{"release_id": rel2, "groups": groups}
		b[k] = v
		return b
	}
	tests := []struct {
		name  string
		body  map[string]any
		field string
	}{
		{"a draft release", with("release_id", draft), "/release_id"},
		{"another fleet's release", with("release_id", otherRel), "/release_id"},
		{"the release the fleet runs", with("release_id", w.release), "/release_id"},
		{"success threshold over 100", with("groups", []any{map[string]any{"percent": 50, "success_threshold": 101}, map[string]any{}}), "/groups/0/success_threshold"},
		{"error threshold under 0", with("groups", []any{map[string]any{"count": 1, "error_threshold": map[string]any{"percent": -1, "min_sample": 1, "action": "pause"}}}), "/groups/0/error_threshold/percent"},
		{"groups over the fleet", with("groups", []any{map[string]any{"count": 3}, map[string]any{"count": 2}}), "/groups"},
		{"percentages over 100", with("groups", []any{map[string]any{"percent": 70}, map[string]any{"percent": 40}}), "/groups"},
		{"an unparsable cron", with("maintenance_window", map[string]any{"cron": "at noon", "duration_seconds": 3600}), "/maintenance_window/cron"},
		{"an unknown time zone", with("maintenance_window", map[string]any{"cron": "0 2 * * *", "duration_seconds": 3600, "time_zone": "Mars/Olympus"}), "/maintenance_window/time_zone"},
		{"a ramp without a rate", with("ramp", map[string]any{"increment_factor": 2, "every_succeeded": 5}), "/ramp"},
		{"tags on the last group", with("groups", []any{map[string]any{"percent": 50}, map[string]any{"tags": map[string]any{"ring": "b"}}}), "/groups/1/tags"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, _, out := call(t, srv, "POST", "/v1/fleets/"+w.fleet+"/rollouts", w.developer, tt.body)
			if status != 400 || field(out) != tt.field {
				t.Fatalf("= %d %v, want 400 naming %s", status, out, tt.field)
			}
		})
	}
	// The fleet's own window is checked the same way.
	status, _, out := call(t, srv, "PATCH", "/v1/fleets/"+w.fleet, w.developer, map[string]any{
		"maintenance_window": map[string]any{"cron": "0 2 * * *", "duration_seconds": 3600, "time_zone": "Mars/Olympus"}})
	if status != 400 || field(out) != "/maintenance_window/time_zone" {
		t.Fatalf("fleet window on Mars = %d %v", status, out)
	}
	f := must(t, srv, 200, "PATCH", "/v1/fleets/"+w.fleet, w.developer, map[string]any{
		"maintenance_window": map[string]any{"cron": "0 2 * * 1-5", "duration_seconds": 7200, "time_zone": "Europe/Berlin"}})
	if mw, _ := f["maintenance_window"].(map[string]any); mw["cron"] != "0 2 * * 1-5" || mw["time_zone"] != "Europe/Berlin" {
		t.Fatalf("fleet window = %v", f["maintenance_window"])
	}
	f = must(t, srv, 200, "PATCH", "/v1/fleets/"+w.fleet, w.developer, map[string]any{"maintenance_window": nil})
	if _, has := f["maintenance_window"]; has {
		t.Fatalf("window after null = %v", f["maintenance_window"])
	}
	// Nothing was written by the refused requests.
	if items := must(t, srv, 200, "GET", "/v1/fleets/"+w.fleet+"/rollouts", w.viewer, nil)["items"].([]any); len(items) != 0 {
		t.Fatalf("refused creates left rollouts: %v", items)
	}
}

// Every action in every state the API can reach: the ones that make sense
// move the rollout, the others are 409 naming the state.
func TestRolloutActions(t *testing.T) {
	srv := apptest.Start(t, "--target=api,registry-proxy")
	tests := []struct {
		from, action string
		want         string // the state after, or "" for 409
	}{
		{"ready", "start", "running"},
		{"ready", "cancel", "canceled"},
		{"ready", "pause", ""},
		{"ready", "resume", ""},
		{"ready", "next-group", ""},
		{"ready", "approve", ""},
		{"ready", "abort", ""},
		{"running", "pause", "paused"},
		{"running", "next-group", "running"},
		{"running", "abort", "aborted"},
		{"running", "start", ""},
		{"running", "resume", ""},
		{"running", "approve", ""},
		{"running", "cancel", ""},
		{"paused", "resume", "running"},
		{"paused", "next-group", "paused"},
		{"paused", "abort", "aborted"},
		{"paused", "pause", ""},
		{"paused", "start", ""},
		{"paused", "approve", ""},
		{"paused", "cancel", ""},
		{"waiting_for_approval", "approve", "running"},
		{"waiting_for_approval", "next-group", "running"},
		{"waiting_for_approval", "pause", "paused"},
		{"waiting_for_approval", "abort", "aborted"},
		{"waiting_for_approval", "resume", ""},
		{"waiting_for_approval", "cancel", ""},
	}
	for _, tt := range tests {
		t.Run(tt.from+"/"+tt.action, func(t *testing.T) {
			w := newWorld(t, srv).withFleet(t)
			w.addDevices(3)
			id := w.rolloutIn(tt.from)
			status, _, out := call(t, srv, "POST", "/v1/rollouts/"+id+"/"+tt.action, w.developer, nil)
			if tt.want == "" {
				detail, _ := out["detail"].(string)
				if status != 409 || out["code"] != "invalid_state" || !strings.Contains(detail, tt.from) {
					t.Fatalf("= %d %v, want 409 invalid_state naming %s", status, out, tt.from)
				}
				after := must(t, srv, 200, "GET", "/v1/rollouts/"+id, w.viewer, nil)
				if after["state"] != tt.from {
					t.Fatalf("a refused action moved the rollout to %v", after["state"])
				}
				return
			}
			if status != 200 || out["state"] != tt.want {
				t.Fatalf("= %d %v, want 200 and %s", status, out["state"], tt.want)
			}
			if tt.action == "next-group" || tt.action == "approve" {
				if out["current_group"] != float64(1) {
					t.Fatalf("current_group = %v, want 1", out["current_group"])
				}
				g0 := out["groups"].([]any)[0].(map[string]any)
				if g0["state"] != "complete" || g0["counts"].(map[string]any)["pending"] != float64(0) {
					t.Fatalf("the group left behind = %v, want complete with its pending devices handed on", g0)
				}
				// There is no group after the last.
				status, _, out := call(t, srv, "POST", "/v1/rollouts/"+id+"/next-group", w.developer, nil)
				if status != 409 || out["code"] != "last_group" {
					t.Fatalf("next-group from the last group = %d %v", status, out)
				}
			}
		})
	}
}

// Start places the selected devices in their groups and holds the fleet
// on what it ran; a second rollout and a re-pin are refused meanwhile; an
// abort lets go and records every transition in the outbox and the audit
// log.
func TestRolloutStartHoldsTheFleet(t *testing.T) {
	srv := apptest.Start(t, "--target=api,registry-proxy")
	w := newWorld(t, srv).withFleet(t)
	ids := w.addDevices(9) // ten in all
	// A pinned device is left out: a pin beats a rollout.
	must(t, srv, 200, "PATCH", "/v1/devices/"+ids[0], w.owner, map[string]any{"pinned_release_id": w.release})
	rel2 := w.withRelease2()
	id := must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/rollouts", w.developer, map[string]any{
		"release_id": rel2, "rate_per_minute": 30,
		"groups": []any{map[string]any{"count": 2, "name": "canary"}, map[string]any{"percent": 50}, map[string]any{}},
	})["id"].(string)
	// One rollout at a time, even while the first is only ready.
	status, _, out := call(t, srv, "POST", "/v1/fleets/"+w.fleet+"/rollouts", w.developer, map[string]any{
		"release_id": rel2, "groups": []any{map[string]any{}}})
	if status != 409 || out["code"] != "fleet_busy" || !strings.Contains(out["detail"].(string), id) {
		t.Fatalf("second rollout = %d %v, want 409 fleet_busy naming %s", status, out, id)
	}

	r := must(t, srv, 200, "POST", "/v1/rollouts/"+id+"/start", w.developer, nil)
	counts := r["counts"].(map[string]any)
	if counts["total"] != float64(9) || counts["pending"] != float64(9) {
		t.Fatalf("counts = %v, want the 9 unpinned devices pending", counts)
	}
	sizes := []float64{}
	for _, g := range r["groups"].([]any) {
		sizes = append(sizes, g.(map[string]any)["counts"].(map[string]any)["total"].(float64))
	}
	// canary 2; 50% of 9 rounded up = 5; the last takes the other 2.
	if fmt.Sprint(sizes) != "[2 5 2]" || r["groups"].([]any)[0].(map[string]any)["state"] != "running" {
		t.Fatalf("group sizes = %v, groups %v", sizes, r["groups"])
	}
	if r["from_release_id"] != w.release {
		t.Fatalf("from_release_id = %v, want %s", r["from_release_id"], w.release)
	}
	// The fleet is held on its release: a re-pin would update everyone unwatched.
	status, _, out = call(t, srv, "PATCH", "/v1/fleets/"+w.fleet, w.owner, map[string]any{"pinned_release_id": rel2})
	if status != 409 || out["code"] != "rollout_active" {
		t.Fatalf("re-pin during a rollout = %d %v", status, out)
	}
	// Other changes to the fleet are fine.
	must(t, srv, 200, "PATCH", "/v1/fleets/"+w.fleet, w.owner, map[string]any{"name": "sensors-2"})

	// Pinning a device mid-rollout takes it out of the rollout.
	devs := must(t, srv, 200, "GET", "/v1/rollouts/"+id+"/devices?limit=3", w.viewer, nil)
	page := devs["items"].([]any)
	if len(page) != 3 || devs["next_cursor"] == nil {
		t.Fatalf("first page = %v", devs)
	}
	pinned := page[0].(map[string]any)["device_id"].(string)
	must(t, srv, 200, "PATCH", "/v1/devices/"+pinned, w.owner, map[string]any{"pinned_release_id": w.release})
	if got := must(t, srv, 200, "GET", "/v1/rollouts/"+id, w.viewer, nil)["counts"].(map[string]any)["total"]; got != float64(8) {
		t.Fatalf("total after pinning one device = %v, want 8", got)
	}
	// Paging reaches every device once.
	seen := map[string]bool{}
	cursor := ""
	for {
		p := must(t, srv, 200, "GET", "/v1/rollouts/"+id+"/devices?limit=3"+cursor, w.viewer, nil)
		for _, d := range p["items"].([]any) {
			seen[d.(map[string]any)["device_id"].(string)] = true
		}
		next, ok := p["next_cursor"].(string)
		if !ok {
			break
		}
		cursor = "&cursor=" + next
	}
	if len(seen) != 8 {
		t.Fatalf("paging saw %d devices, want 8", len(seen))
	}
	if g := must(t, srv, 200, "GET", "/v1/rollouts/"+id+"/devices?group=0", w.viewer, nil)["items"].([]any); len(g) > 2 {
		t.Fatalf("group 0 filter = %d devices", len(g))
	}

	r = must(t, srv, 200, "POST", "/v1/rollouts/"+id+"/abort", w.developer, map[string]any{"rollback": true})
	if r["state"] != "rolled_back" || r["ended_at"] == nil {
		t.Fatalf("abort with rollback = %v", r)
	}
	// The fleet stays on what it ran; a new rollout may start.
	f := must(t, srv, 200, "GET", "/v1/fleets/"+w.fleet, w.viewer, nil)
	if f["pinned_release_id"] != w.release {
		t.Fatalf("fleet after the abort = %v", f)
	}
	must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/rollouts", w.developer, map[string]any{
		"release_id": rel2, "groups": []any{map[string]any{}}})

	// Every transition of the first rollout is in the outbox, in order.
	rows, err := srv.Pool(t).Query(context.Background(), `SELECT record FROM rollout_events WHERE rollout_id = $1 ORDER BY seq`, id)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var rec []byte
		if err := rows.Scan(&rec); err != nil {
			t.Fatal(err)
		}
		var ev struct{ Event, State, Actor string }
		if err := json.Unmarshal(rec, &ev); err != nil {
			t.Fatal(err)
		}
		got = append(got, ev.Event+":"+ev.State+":"+ev.Actor)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := "[created:ready:dev@example.com started:running:dev@example.com group_started:running:dev@example.com rolled_back:rolled_back:dev@example.com]"
	if fmt.Sprint(got) != want {
		t.Fatalf("events = %v\nwant %s", got, want)
	}
	// And in the audit log.
	audit := must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/audit-events?limit=200", w.admin, nil)["items"].([]any)
	ops := map[string]bool{}
	for _, e := range audit {
		e := e.(map[string]any)
		if e["target_id"] == id {
			ops[e["operation"].(string)] = true
		}
	}
	for _, op := range []string{"rollout:create", "rollout:start", "rollout:abort"} {
		if !ops[op] {
			t.Errorf("audit log lacks %s on the rollout: %v", op, ops)
		}
	}
}

// Device groups: a saved filter the device list and rollouts target; it
// cannot be deleted while a rollout that has not ended uses it.
func TestDeviceGroups(t *testing.T) {
	srv := apptest.Start(t, "--target=api,registry-proxy")
	w := newWorld(t, srv).withFleet(t)
	ids := w.addDevices(4)
	for i, id := range ids {
		ring := "a"
		if i%2 == 1 {
			ring = "b"
		}
		must(t, srv, 200, "PATCH", "/v1/devices/"+id, w.owner, map[string]any{"tags": map[string]any{"ring": ring}})
	}
	groups := "/v1/orgs/" + w.org + "/device-groups"
	g := must(t, srv, 201, "POST", groups, w.developer, map[string]any{"name": "ring b", "tags": map[string]any{"ring": "b"}})
	gid := g["id"].(string)
	if status, _, out := call(t, srv, "POST", groups, w.developer, map[string]any{"name": "ring b"}); status != 409 || out["code"] != "name_taken" {
		t.Fatalf("duplicate name = %d %v", status, out)
	}
	if status, _, _ := call(t, srv, "POST", groups, w.viewer, map[string]any{"name": "x"}); status != 403 {
		t.Fatalf("viewer creating a group = %d", status)
	}
	list := func(q string) int {
		return len(must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/devices?device_group_id="+gid+q, w.viewer, nil)["items"].([]any))
	}
	if n := list(""); n != 2 {
		t.Fatalf("devices of ring b = %d, want 2", n)
	}
	// Narrow it to one device by id; clear the condition again.
	must(t, srv, 200, "PATCH", "/v1/device-groups/"+gid, w.developer, map[string]any{"device_ids": []any{ids[1]}})
	if n := list(""); n != 1 {
		t.Fatalf("devices of ring b and the id = %d, want 1", n)
	}
	must(t, srv, 200, "PATCH", "/v1/device-groups/"+gid, w.developer, map[string]any{"device_ids": []any{}})
	// A name prefix is a prefix, not a pattern: "_" matches only "_".
	must(t, srv, 200, "PATCH", "/v1/devices/"+ids[1], w.owner, map[string]any{"name": "lab_1"})
	must(t, srv, 200, "PATCH", "/v1/devices/"+ids[3], w.owner, map[string]any{"name": "labX3"})
	must(t, srv, 200, "PATCH", "/v1/device-groups/"+gid, w.developer, map[string]any{"name_prefix": "lab_"})
	if n := list(""); n != 1 {
		t.Fatalf("devices of ring b named lab_… = %d, want 1", n)
	}
	must(t, srv, 200, "PATCH", "/v1/device-groups/"+gid, w.developer, map[string]any{"name_prefix": ""})
	// Another organisation's group selects nothing here.
	otherOwner := srv.Token(t, "outsider@example.com")
	other := must(t, srv, 201, "POST", "/v1/orgs/"+w.otherOrg+"/device-groups", otherOwner, map[string]any{"name": "all"})["id"].(string)
	if n := len(must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/devices?device_group_id="+other, w.viewer, nil)["items"].([]any)); n != 0 {
		t.Fatalf("another organisation's group selects %d devices here", n)
	}
	if got := must(t, srv, 200, "GET", "/v1/device-groups/"+gid, w.viewer, nil); len(got["device_ids"].([]any)) != 0 {
		t.Fatalf("cleared device_ids = %v", got)
	}
	if items := must(t, srv, 200, "GET", groups, w.viewer, nil)["items"].([]any); len(items) != 1 {
		t.Fatalf("groups = %v", items)
	}

	// A rollout to the group selects only its devices.
	rel2 := w.withRelease2()
	// Groups cannot ask for more devices than it selects.
	status, _, out := call(t, srv, "POST", "/v1/fleets/"+w.fleet+"/rollouts", w.developer, map[string]any{
		"release_id": rel2, "device_group_id": gid, "groups": []any{map[string]any{"count": 3}}})
	if status != 400 || field(out) != "/groups" {
		t.Fatalf("3 devices of a group of 2 = %d %v", status, out)
	}
	rid := must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/rollouts", w.developer, map[string]any{
		"release_id": rel2, "device_group_id": gid, "groups": []any{map[string]any{}}})["id"].(string)
	r := must(t, srv, 200, "POST", "/v1/rollouts/"+rid+"/start", w.developer, nil)
	if r["counts"].(map[string]any)["total"] != float64(2) || r["device_group_id"] != gid {
		t.Fatalf("rollout to ring b = %v", r)
	}
	if status, _, out := call(t, srv, "DELETE", "/v1/device-groups/"+gid, w.developer, nil); status != 409 || out["code"] != "in_use" {
		t.Fatalf("deleting a group in use = %d %v", status, out)
	}
	must(t, srv, 200, "POST", "/v1/rollouts/"+rid+"/abort", w.developer, nil)
	must(t, srv, 204, "DELETE", "/v1/device-groups/"+gid, w.developer, nil)
	if status, _, _ := call(t, srv, "GET", "/v1/device-groups/"+gid, w.viewer, nil); status != 404 {
		t.Fatalf("deleted group = %d", status)
	}
}
