package scheduler

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/rollout"
	"github.com/flock-io/flock-api/internal/testutil/promtest"
	st "github.com/flock-io/flock-api/workers/scheduler/schedulertest"
)

// An unreached device (never heard from) and a stuck one (half way) end
// terminal at their deadline, so the group completes; the rollout then
// finishes and the fleet moves to the release: tracking its latest again,
// as before the rollout, with the rollout's assignments cleared.
func TestDeadlinesEndTheGroupAndTheFleetMoves(t *testing.T) {
	h := newHarness(t, 4, nil)
	r := oneGroup(0)
	r.Groups[0].SuccessThreshold = 50
	id := h.start(r)
	h.consume()
	h.step(t0)
	f := h.f
	var fleetPolicy string
	if err := h.pool.QueryRow(h.ctx, `SELECT release_policy FROM fleets WHERE id = $1`, f.ID).Scan(&fleetPolicy); err != nil || fleetPolicy != "pinned" {
		t.Fatalf("fleet %s %v, want held (pinned) while the rollout runs", fleetPolicy, err)
	}
	at := t0.Add(time.Minute)
	h.send(st.Report(f, f.Devices[0], 1, f.New, at, st.Running("app")),
		st.Report(f, f.Devices[1], 1, f.New, at, st.Running("app")),
		st.Event(f, f.Devices[2], events.UpdateEventTypeDownloadStarted, f.New, at))
	h.step(t0.Add(599 * time.Second))
	if got := h.rollout(id).State; got != rollout.Running {
		t.Fatalf("before the deadline the rollout is %s, want running: two devices are not done", got)
	}
	h.step(t0.Add(600 * time.Second))
	h.wantState(id, f.Devices[2], rollout.DeviceTimedOut)
	h.wantState(id, f.Devices[3], rollout.DeviceUnreached)
	ro := h.rollout(id)
	if ro.State != rollout.Finished || ro.EndedAt == nil {
		t.Fatalf("rollout %s (%q), want finished", ro.State, ro.StateReason)
	}
	var policy string
	var pinned *uuid.UUID
	var assigned int
	if err := h.pool.QueryRow(h.ctx, `SELECT f.release_policy, f.pinned_release_id,
		(SELECT count(*) FROM devices d WHERE d.fleet_id = f.id AND d.rollout_release_id IS NOT NULL)
		FROM fleets f WHERE f.id = $1`, f.ID).Scan(&policy, &pinned, &assigned); err != nil {
		t.Fatal(err)
	}
	if policy != "track_latest" || pinned != nil || assigned != 0 {
		t.Errorf("fleet %s pinned %v with %d assignments, want tracking its latest (the release) with none", policy, pinned, assigned)
	}
	want := []string{"group_succeeded@0", "group_completed@0", "finished@0"}
	if got := h.events(id); !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
	var audits int
	if err := h.pool.QueryRow(h.ctx, `SELECT count(*) FROM audit_events WHERE actor_type = 'system' AND actor_label = 'scheduler'
		AND operation = 'rollout:finish' AND target_id = $1`, id.String()).Scan(&audits); err != nil || audits != 1 {
		t.Errorf("%d audit records of the finish (%v), want 1", audits, err)
	}
}

// Thresholds count the devices a group has now: a failed device deleted
// mid-rollout leaves the counts, so it neither trips the error threshold
// nor holds the group open (hawkBit#3110, #328), and the next group starts
// in the same step as the group succeeds.
func TestThresholdsWhenADeviceIsDeleted(t *testing.T) {
	h := newHarness(t, 8, nil)
	g := rollout.GroupSpec{Count: ptr(4), SuccessThreshold: 60, DeviceTimeoutSeconds: 600,
		ErrorThreshold: &rollout.ErrorThreshold{Percent: 40, MinSample: 3, Action: rollout.ThresholdPause}}
	id := h.start(st.Rollout{Groups: []rollout.GroupSpec{g, {SuccessThreshold: 100}}})
	h.consume()
	h.step(t0)
	f := h.f
	var first []uuid.UUID
	for dev, row := range h.devices(id) {
		if row.GroupIdx == 0 {
			first = append(first, dev)
		}
	}
	at := t0.Add(time.Minute)
	h.send(st.Event(f, first[0], events.UpdateEventTypeFailed, f.New, at),
		st.Report(f, first[1], 1, f.New, at, st.Running("app")),
		st.Event(f, first[2], events.UpdateEventTypeFailed, f.New, at))
	// Two of three failed: it would trip. The first leaves the fleet.
	h.exec(`DELETE FROM devices WHERE id = $1`, first[0])
	h.step(at)
	if r := h.rollout(id); r.State != rollout.Running || r.CurrentGroup != 0 {
		t.Fatalf("rollout %s in group %d (%q), want running group 0: one failed of two finished is below the minimum sample", r.State, r.CurrentGroup, r.StateReason)
	}
	h.send(st.Report(f, first[3], 1, f.New, at, st.Running("app")))
	h.step(at.Add(time.Second))
	r := h.rollout(id)
	if r.State != rollout.Running || r.CurrentGroup != 1 {
		t.Fatalf("rollout %s in group %d (%q), want running group 1: 2 of 3 succeeded (66%% ≥ 60%%), 1 of 3 failed (33%% ≤ 40%%)", r.State, r.CurrentGroup, r.StateReason)
	}
	if gs := h.groups(id); gs[0].State != rollout.GroupSucceeded || gs[1].State != rollout.GroupRunning {
		t.Errorf("groups %s, %s; want succeeded, running", gs[0].State, gs[1].State)
	}
	if got := h.states(id); got[rollout.DeviceTargeted] != 4 || got[rollout.DevicePending] != 0 {
		t.Errorf("devices %v, want group 1's four targeted in the step that started it", got)
	}
	want := []string{"group_succeeded@0", "group_started@1"}
	if got := h.events(id); !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
}

// An error threshold with action pause pauses the rollout, naming the
// counts; pause stops new targeting, and a device already updating still
// finishes.
func TestTrippedThresholdPausesAndUpdatingDevicesFinish(t *testing.T) {
	h := newHarness(t, 10, nil)
	r := oneGroup(0)
	r.Spec.RatePerMinute = 60 // one device a second, six at most at once
	r.Groups[0].ErrorThreshold = &rollout.ErrorThreshold{Percent: 50, MinSample: 1, Action: rollout.ThresholdPause}
	id := h.start(r)
	h.consume()
	h.step(t0)
	h.step(t0.Add(2 * time.Second))
	targeted := []uuid.UUID{}
	for dev, row := range h.devices(id) {
		if row.State == rollout.DeviceTargeted {
			targeted = append(targeted, dev)
		}
	}
	if len(targeted) != 3 {
		t.Fatalf("%d targeted, want 3 (1, then 2 seconds' worth)", len(targeted))
	}
	f := h.f
	at := t0.Add(3 * time.Second)
	h.send(st.Event(f, targeted[0], events.UpdateEventTypeFailed, f.New, at),
		st.Event(f, targeted[1], events.UpdateEventTypeInstallStarted, f.New, at))
	h.step(at)
	ro := h.rollout(id)
	if ro.State != rollout.Paused || !strings.Contains(ro.StateReason, "1 of 1 finished devices failed") {
		t.Fatalf("rollout %s (%q), want paused naming the counts", ro.State, ro.StateReason)
	}
	if gs := h.groups(id); gs[0].State != rollout.GroupFailed {
		t.Errorf("group %s, want failed", gs[0].State)
	}
	h.step(at.Add(time.Minute))
	if got := h.states(id)[rollout.DevicePending]; got != 7 {
		t.Errorf("%d pending a minute into the pause, want 7: a paused rollout targets no one", got)
	}
	h.send(st.Report(f, targeted[1], 1, f.New, at.Add(time.Minute), st.Running("app")))
	h.step(at.Add(2 * time.Minute))
	h.wantState(id, targeted[1], rollout.DeviceSucceeded)
	if got := h.events(id); !slices.Equal(got, []string{"threshold_tripped@0"}) {
		t.Errorf("events %v, want one threshold_tripped", got)
	}
	var op string
	if err := h.pool.QueryRow(h.ctx, `SELECT operation FROM audit_events WHERE actor_type = 'system' AND target_id = $1`, id.String()).Scan(&op); err != nil || op != "rollout:pause" {
		t.Errorf("audit %q %v, want rollout:pause", op, err)
	}
}

// An error threshold with action abort, on a rollout that rolls back on
// abort, puts every touched device back on its previous assignment.
func TestTrippedAbortRollsBack(t *testing.T) {
	h := newHarness(t, 3, nil)
	r := oneGroup(0)
	r.Spec.RollbackOnAbort = true
	r.Groups[0].ErrorThreshold = &rollout.ErrorThreshold{Percent: 10, MinSample: 1, Action: rollout.ThresholdAbort}
	id := h.start(r)
	h.consume()
	h.step(t0)
	f := h.f
	var assigned int
	if err := h.pool.QueryRow(h.ctx, `SELECT count(*) FROM devices WHERE rollout_release_id = $1`, f.New).Scan(&assigned); err != nil || assigned != 3 {
		t.Fatalf("%d devices assigned the release (%v), want 3", assigned, err)
	}
	h.send(st.Event(f, f.Devices[0], events.UpdateEventTypeFailed, f.New, t0.Add(time.Second)))
	h.step(t0.Add(time.Second))
	if ro := h.rollout(id); ro.State != rollout.RolledBack {
		t.Fatalf("rollout %s (%q), want rolled_back", ro.State, ro.StateReason)
	}
	if got := h.states(id); got[rollout.DeviceRolledBack] != 3 {
		t.Errorf("devices %v, want 3 rolled back", got)
	}
	if err := h.pool.QueryRow(h.ctx, `SELECT count(*) FROM devices WHERE rollout_release_id IS NOT NULL`).Scan(&assigned); err != nil || assigned != 0 {
		t.Errorf("%d devices still assigned (%v), want none: back to their fleet", assigned, err)
	}
}

// A device that joins the fleet during a continuous rollout takes part,
// in a group by the stable hash of its id, not the first one (Mender); a
// group that already ended passes it to the current group. A snapshot
// rollout takes no one after start.
func TestLateJoinersLandByHash(t *testing.T) {
	h := newHarness(t, 9, nil)
	groups := []rollout.GroupSpec{{Percent: ptr(34.0), SuccessThreshold: 100}, {Percent: ptr(33.0), SuccessThreshold: 100}, {SuccessThreshold: 100}}
	id := h.start(st.Rollout{Membership: "continuous", Groups: groups})
	h.consume()
	h.step(t0)
	shares := []float64{}
	for _, g := range h.groups(id) {
		shares = append(shares, g.Share)
	}
	none := func(int) bool { return false }
	// New devices: one the hash puts in group 2, one in group 0, one pinned.
	joiner := func(want int) uuid.UUID {
		for {
			d := uuid.New()
			if rollout.GroupFor(id, d, shares, 0, none) == want {
				return d
			}
		}
	}
	late2, late0, pinned := joiner(2), joiner(0), uuid.New()
	f := h.f
	for _, d := range []uuid.UUID{late2, late0, pinned} {
		h.exec(`INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key)
			VALUES ($1, $2, $3, 'late', 'generic-amd64', 'amd64', decode(repeat('00', 32), 'hex'))`, d, f.Org, f.ID)
	}
	h.exec(`UPDATE devices SET pinned_release_id = $1 WHERE id = $2`, f.Old, pinned)
	h.send(st.Report(f, late2, 1, f.Old, t0, st.Running("app")), st.Report(f, pinned, 1, f.Old, t0, st.Running("app")))
	rows := h.devices(id)
	if d, ok := rows[late2]; !ok || d.GroupIdx != 2 || d.State != rollout.DevicePending {
		t.Errorf("late joiner: %+v (in %v), want pending in group 2", d, ok)
	}
	if _, ok := rows[pinned]; ok {
		t.Errorf("a pinned device joined the rollout")
	}
	// Group 0 ends; the joiner whose hash says 0 goes to group 1.
	h.exec(`UPDATE rollout_devices SET state = 'succeeded', deadline = NULL WHERE rollout_id = $1 AND group_idx = 0`, id)
	h.step(t0.Add(time.Second))
	if r := h.rollout(id); r.CurrentGroup != 1 {
		t.Fatalf("current group %d, want 1", r.CurrentGroup)
	}
	h.send(st.Report(f, late0, 1, f.Old, t0, st.Running("app")))
	if d := h.devices(id)[late0]; d.GroupIdx != 1 {
		t.Errorf("a joiner whose group ended is in group %d, want the current one (1)", d.GroupIdx)
	}
	if got := promtest.Value(h.s.m.joined); got != 2 {
		t.Errorf("%v joined, want 2", got)
	}

	// A snapshot rollout of another fleet takes none.
	h2 := newHarness(t, 2, nil)
	id2 := h2.start(oneGroup(0))
	h2.consume()
	late := uuid.New()
	h2.exec(`INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key)
		VALUES ($1, $2, $3, 'late', 'generic-amd64', 'amd64', decode(repeat('00', 32), 'hex'))`, late, h2.f.Org, h2.f.ID)
	h2.send(st.Report(h2.f, late, 1, h2.f.Old, t0, st.Running("app")))
	if _, ok := h2.devices(id2)[late]; ok {
		t.Errorf("a snapshot rollout took a late joiner")
	}
}

// The rate limit targets no more than the bucket holds: the first device
// at once, then the rate, holding at most a tenth of a minute's worth.
func TestRateLimit(t *testing.T) {
	h := newHarness(t, 100, nil)
	r := oneGroup(0)
	r.Spec.RatePerMinute = 60
	id := h.start(r)
	for _, s := range []struct {
		at   time.Duration
		want int
	}{{0, 1}, {time.Second / 2, 1}, {time.Second, 2}, {30 * time.Second, 8}, {31 * time.Second, 9}, {31 * time.Second, 9}} {
		h.step(t0.Add(s.at))
		if got := 100 - h.states(id)[rollout.DevicePending]; got != s.want {
			t.Fatalf("at +%s: %d targeted, want %d", s.at, got, s.want)
		}
	}
	var tokens float64
	var rate float64
	if err := h.pool.QueryRow(h.ctx, `SELECT tokens, rate_per_minute FROM rollouts WHERE id = $1`, id).Scan(&tokens, &rate); err != nil || tokens >= 1 || rate != 60 {
		t.Errorf("bucket %v at rate %v (%v), want less than a token at 60/min", tokens, rate, err)
	}
}

// The ramp raises the rate as devices succeed.
func TestRateRamp(t *testing.T) {
	h := newHarness(t, 100, nil)
	r := oneGroup(0)
	r.Spec.RatePerMinute = 60
	r.Spec.Ramp = &rollout.Ramp{Factor: 2, EverySucceeded: 10}
	id := h.start(r)
	h.exec(`UPDATE rollout_devices SET state = 'succeeded' WHERE device_id IN (SELECT device_id FROM rollout_devices WHERE rollout_id = $1 LIMIT 20)`, id)
	h.step(t0)
	h.step(t0.Add(time.Minute))
	// 20 succeeded: 60 × 2² = 240/min; the bucket holds 24.
	if got := 80 - h.states(id)[rollout.DevicePending]; got != 25 {
		t.Errorf("%d targeted, want 25 (1 at once, then 24)", got)
	}
}

// Devices are newly targeted only while the maintenance window (the
// rollout's, else the fleet's) is open.
func TestMaintenanceWindow(t *testing.T) {
	h := newHarness(t, 5, nil)
	id := h.start(oneGroup(0))
	h.exec(`UPDATE fleets SET maintenance_window = '{"cron": "0 3 * * *", "duration_seconds": 3600, "time_zone": "Europe/Berlin"}' WHERE id = $1`, h.f.ID)
	h.step(t0) // 13:00 in Berlin
	if got := h.states(id)[rollout.DevicePending]; got != 5 {
		t.Fatalf("%d pending outside the window, want 5", got)
	}
	h.step(time.Date(2026, 12, 2, 2, 30, 0, 0, time.UTC)) // 03:30 in Berlin
	if got := h.states(id)[rollout.DeviceTargeted]; got != 5 {
		t.Fatalf("%d targeted inside the window, want 5", got)
	}

	// The rollout's own window wins over the fleet's.
	h2 := newHarness(t, 5, nil)
	r := oneGroup(0)
	r.Spec.Window = &rollout.Window{Cron: "0 12 * * *", DurationSeconds: 600}
	id2 := h2.start(r)
	h2.exec(`UPDATE fleets SET maintenance_window = '{"cron": "0 3 * * *", "duration_seconds": 3600}' WHERE id = $1`, h2.f.ID)
	h2.step(t0.Add(5 * time.Minute))
	if got := h2.states(id2)[rollout.DeviceTargeted]; got != 5 {
		t.Fatalf("%d targeted in the rollout's window, want 5", got)
	}
}

// A group that requires approval waits for it once it succeeds.
func TestApprovalWaits(t *testing.T) {
	h := newHarness(t, 4, nil)
	id := h.start(st.Rollout{Groups: []rollout.GroupSpec{{Count: ptr(2), SuccessThreshold: 100, RequiresApproval: true}, {SuccessThreshold: 100}}})
	h.step(t0)
	h.exec(`UPDATE rollout_devices SET state = 'succeeded', deadline = NULL WHERE rollout_id = $1 AND group_idx = 0`, id)
	h.step(t0.Add(time.Second))
	if r := h.rollout(id); r.State != rollout.WaitingForApproval || r.CurrentGroup != 0 {
		t.Fatalf("rollout %s in group %d, want waiting for approval in group 0", r.State, r.CurrentGroup)
	}
	h.step(t0.Add(time.Minute))
	if got := h.states(id)[rollout.DevicePending]; got != 2 {
		t.Errorf("%d pending while waiting, want 2", got)
	}
}

// A release finalised while the rollout ran was never rolled out: a fleet
// that tracked its latest release before is pinned to the rollout's
// release at the finish, not sent to the newer one unwatched.
func TestFinishDoesNotTrackPastTheRollout(t *testing.T) {
	h := newHarness(t, 1, nil)
	id := h.start(oneGroup(0))
	h.consume()
	h.step(t0)
	f := h.f
	h.exec(`INSERT INTO releases (org_id, fleet_id, version, status, services, finalized_at)
		SELECT org_id, fleet_id, '9.9', 'final', services, now() + interval '1 hour' FROM releases WHERE id = $1`, f.New)
	h.send(st.Report(f, f.Devices[0], 1, f.New, t0.Add(time.Second), st.Running("app")))
	h.step(t0.Add(2 * time.Second))
	if ro := h.rollout(id); ro.State != rollout.Finished {
		t.Fatalf("rollout %s (%q), want finished", ro.State, ro.StateReason)
	}
	var policy string
	var pinned *uuid.UUID
	if err := h.pool.QueryRow(h.ctx, `SELECT release_policy, pinned_release_id FROM fleets WHERE id = $1`, f.ID).Scan(&policy, &pinned); err != nil {
		t.Fatal(err)
	}
	if policy != "pinned" || pinned == nil || *pinned != f.New {
		t.Fatalf("fleet %s on %v, want pinned to the rolled-out release %s", policy, pinned, f.New)
	}
}
