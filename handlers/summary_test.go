package handlers_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// summaryCounts writes a summary's counts as one text, so a whole summary
// compares at once.
func summaryCounts(c map[string]any) string {
	b, _ := json.Marshal(map[string]any{"devices": c["devices"], "online": c["online"], "offline": c["offline"],
		"never_connected": c["never_connected"], "by_release": c["by_release"], "by_update_status": c["by_update_status"]})
	return string(b)
}

func statusCounts(idle, updating, failed, unknown int) []any {
	return []any{
		map[string]any{"status": "idle", "devices": idle}, map[string]any{"status": "updating", "devices": updating},
		map[string]any{"status": "failed", "devices": failed}, map[string]any{"status": "unknown", "devices": unknown},
	}
}

// countsText is summaryCounts of the counts given.
func countsText(devices, online, offline, never int, byRelease []any, byStatus []any) string {
	if byRelease == nil {
		byRelease = []any{}
	}
	var v map[string]any
	b, _ := json.Marshal(map[string]any{"devices": devices, "online": online, "offline": offline, "never_connected": never,
		"by_release": byRelease, "by_update_status": byStatus})
	_ = json.Unmarshal(b, &v)
	return summaryCounts(v)
}

// A fleet's summary counts its devices by connectivity, running release,
// update status and rollout group as they change, through the API, for a
// viewer; the organisation's adds up its fleets; another organisation's
// are not found.
func TestFleetSummary(t *testing.T) {
	srv := apptest.Start(t, "--target=api,registry-proxy")
	w := newWorld(t, srv).withFleet(t)
	ctx := t.Context()
	pool := srv.Pool(t)
	q := db.New(pool)

	devs := []*fakeDevice{w.device}
	for range 4 {
		d := newDevice(t)
		must(t, srv, 201, "POST", "/device/v1/register", "", d.registration(w.provKey))
		devs = append(devs, d)
	}
	report := func(d *fakeDevice, seq int, release string, statuses ...string) {
		t.Helper()
		body := map[string]any{"seq": seq}
		if release != "" {
			body["running_release_id"] = release
		}
		var svcs []any
		for i, s := range statuses {
			svcs = append(svcs, map[string]any{"name": fmt.Sprintf("svc%d", i), "status": s})
		}
		body["services"] = svcs
		must(t, srv, 204, "PATCH", "/device/v1/state", d.token(t, srv), body)
	}
	report(devs[0], 1, w.release, "running")              // idle
	report(devs[1], 1, "", "running", "downloading")      // updating
	report(devs[2], 1, w.release, "installing", "failed") // failed
	connect := func(d *fakeDevice, key int64, online bool) {
		t.Helper()
		if _, err := q.DevicesApplyConnectivity(ctx, db.DevicesApplyConnectivityParams{Ids: []uuid.UUID{d.id},
			Keys: []int64{key}, Connected: []bool{online}, Ats: []time.Time{time.Now()}}); err != nil {
			t.Fatal(err)
		}
	}
	connect(devs[0], 10, true)
	connect(devs[1], 10, true)
	connect(devs[1], 11, false)

	rel2 := w.withRelease2()
	rollout := must(t, srv, 201, "POST", "/v1/fleets/"+w.fleet+"/rollouts", w.owner, map[string]any{
		"release_id": rel2, "groups": []any{map[string]any{"percent": 40}, map[string]any{}},
	})["id"].(string)
	must(t, srv, 200, "POST", "/v1/rollouts/"+rollout+"/start", w.owner, nil)

	other := w.emptyFleet()
	fleet := must(t, srv, 200, "GET", "/v1/fleets/"+w.fleet+"/summary", w.viewer, nil)
	if fleet["fleet_id"] != w.fleet {
		t.Fatalf("fleet_id = %v, want %s", fleet["fleet_id"], w.fleet)
	}
	want := countsText(5, 1, 1, 3,
		[]any{map[string]any{"devices": 3}, map[string]any{"release_id": w.release, "devices": 2}},
		statusCounts(1, 1, 1, 2))
	if got := summaryCounts(fleet["counts"].(map[string]any)); got != want {
		t.Errorf("fleet counts\n%s\nwant\n%s", got, want)
	}
	// The rollout's groups say what the rollout itself says.
	rolls := fleet["rollouts"].([]any)
	if len(rolls) != 1 {
		t.Fatalf("rollouts = %v, want the running one", rolls)
	}
	r := rolls[0].(map[string]any)
	own := must(t, srv, 200, "GET", "/v1/rollouts/"+rollout, w.viewer, nil)
	if r["rollout_id"] != rollout || r["state"] != "running" {
		t.Errorf("rollout = %v %v, want %s running", r["rollout_id"], r["state"], rollout)
	}
	groups := r["groups"].([]any)
	ownGroups := own["groups"].([]any)
	if len(groups) != 2 || len(ownGroups) != 2 {
		t.Fatalf("groups %v, rollout's own %v", groups, ownGroups)
	}
	total := 0.0
	for i, g := range groups {
		got, _ := json.Marshal(g.(map[string]any)["counts"])
		wantG, _ := json.Marshal(ownGroups[i].(map[string]any)["counts"])
		if g.(map[string]any)["index"] != float64(i) || string(got) != string(wantG) {
			t.Errorf("group %d: %v %s, want index %d and the rollout's counts %s", i, g.(map[string]any)["index"], got, i, wantG)
		}
		total += g.(map[string]any)["counts"].(map[string]any)["total"].(float64)
	}
	if total != 5 {
		t.Errorf("rollout devices = %v, want all 5", total)
	}

	// A move and a delete show at once, in both fleets.
	must(t, srv, 200, "PATCH", "/v1/devices/"+devs[2].id.String(), w.owner, map[string]any{"fleet_id": other})
	must(t, srv, 204, "DELETE", "/v1/devices/"+devs[3].id.String(), w.owner, nil)
	wantA := countsText(3, 1, 1, 1,
		[]any{map[string]any{"devices": 2}, map[string]any{"release_id": w.release, "devices": 1}},
		statusCounts(1, 1, 0, 1))
	wantB := countsText(1, 0, 0, 1, []any{map[string]any{"release_id": w.release, "devices": 1}}, statusCounts(0, 0, 1, 0))
	// Equal counts: a release before none reported.
	wantOrg := countsText(4, 1, 1, 2,
		[]any{map[string]any{"release_id": w.release, "devices": 2}, map[string]any{"devices": 2}},
		statusCounts(1, 1, 1, 1))
	check := func() error {
		a := must(t, srv, 200, "GET", "/v1/fleets/"+w.fleet+"/summary", w.viewer, nil)
		if got := summaryCounts(a["counts"].(map[string]any)); got != wantA {
			return fmt.Errorf("fleet counts after a move and a delete\n%s\nwant\n%s", got, wantA)
		}
		if g := a["rollouts"].([]any)[0].(map[string]any)["groups"].([]any); g[0].(map[string]any)["counts"].(map[string]any)["total"].(float64)+
			g[1].(map[string]any)["counts"].(map[string]any)["total"].(float64) != 3 {
			return fmt.Errorf("rollout groups %v, want the 3 devices left", g)
		}
		b := must(t, srv, 200, "GET", "/v1/fleets/"+other+"/summary", w.viewer, nil)
		if got := summaryCounts(b["counts"].(map[string]any)); got != wantB || len(b["rollouts"].([]any)) != 0 {
			return fmt.Errorf("other fleet counts\n%s %v\nwant\n%s and no rollouts", got, b["rollouts"], wantB)
		}
		org := must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/summary", w.viewer, nil)
		if got := summaryCounts(org["counts"].(map[string]any)); org["org_id"] != w.org || got != wantOrg {
			return fmt.Errorf("org %v counts\n%s\nwant\n%s", org["org_id"], got, wantOrg)
		}
		fleets := org["fleets"].([]any)
		byID := map[string]map[string]any{}
		for _, f := range fleets {
			byID[f.(map[string]any)["fleet_id"].(string)] = f.(map[string]any)
		}
		if len(fleets) != 2 || summaryCounts(byID[w.fleet]["counts"].(map[string]any)) != wantA ||
			summaryCounts(byID[other]["counts"].(map[string]any)) != wantB {
			return fmt.Errorf("org fleets %v, want both fleets with their own counts", fleets)
		}
		return nil
	}
	if err := check(); err != nil {
		t.Fatal(err)
	}

	// The janitor folds the deltas into the counts; the summary stays.
	testutil.Eventually(t, "the deltas folded", func() error {
		var n int64
		if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM device_summary_deltas) + (SELECT count(*) FROM rollout_summary_deltas)`).Scan(&n); err != nil {
			return err
		}
		if n != 0 {
			return fmt.Errorf("%d deltas pending", n)
		}
		return nil
	})
	if err := check(); err != nil {
		t.Fatalf("after compaction: %v", err)
	}

	// Another organisation's fleet and the organisation itself are not
	// found for an outsider; an anonymous caller is not let in.
	for _, path := range []string{"/v1/fleets/" + w.fleet + "/summary", "/v1/orgs/" + w.org + "/summary"} {
		if status, _, out := call(t, srv, "GET", path, w.outsider, nil); status != 404 || out["code"] != "not_found" {
			t.Errorf("outsider GET %s = %d %v, want 404 not_found", path, status, out)
		}
		if status, _, _ := call(t, srv, "GET", path, "", nil); status != 401 {
			t.Errorf("anonymous GET %s = %d, want 401", path, status)
		}
	}
	// The outsider's own empty organisation has an empty summary.
	theirs := must(t, srv, 200, "GET", "/v1/orgs/"+w.otherOrg+"/summary", w.outsider, nil)
	if got, want := summaryCounts(theirs["counts"].(map[string]any)), countsText(0, 0, 0, 0, nil, statusCounts(0, 0, 0, 0)); got != want ||
		len(theirs["fleets"].([]any)) != 0 {
		t.Errorf("an empty organisation's summary %s %v, want %s and no fleets", got, theirs["fleets"], want)
	}
}
