package rollout

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/asyncapi"
)

// Every action in every state: what it leads to, or that it is refused.
func TestActEveryActionInEveryState(t *testing.T) {
	type outcome struct {
		state     string
		nextGroup bool
	}
	allowed := map[string]map[string]outcome{
		Ready:              {ActionStart: {Running, false}, ActionCancel: {Canceled, false}},
		Running:            {ActionPause: {Paused, false}, ActionNextGroup: {Running, true}, ActionAbort: {Aborted, false}},
		Paused:             {ActionResume: {Running, false}, ActionNextGroup: {Paused, true}, ActionAbort: {Aborted, false}},
		WaitingForApproval: {ActionApprove: {Running, true}, ActionNextGroup: {Running, true}, ActionPause: {Paused, false}, ActionAbort: {Aborted, false}},
	}
	for _, state := range States {
		for _, action := range Actions {
			t.Run(state+"/"+action, func(t *testing.T) {
				step, err := Act(state, action, false)
				want, ok := allowed[state][action]
				if !ok {
					if !errors.Is(err, ErrInvalidAction) || !strings.Contains(err.Error(), state) {
						t.Fatalf("Act = %+v, %v; want ErrInvalidAction naming %s", step, err, state)
					}
					return
				}
				if err != nil || step.State != want.state || step.NextGroup != want.nextGroup || step.Rollback {
					t.Fatalf("Act = %+v, %v; want %+v", step, err, want)
				}
			})
		}
	}
	for _, state := range []string{Running, Paused, WaitingForApproval} {
		if step, err := Act(state, ActionAbort, true); err != nil || step.State != RolledBack || !step.Rollback {
			t.Errorf("abort with rollback from %s = %+v, %v", state, step, err)
		}
	}
}

var (
	rel  = uuid.MustParse("11111111-1111-4111-8111-111111111111")
	prev = uuid.MustParse("22222222-2222-4222-8222-222222222222")
	t0   = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
)

func running(services ...string) []ServiceReport {
	var out []ServiceReport
	for _, s := range services {
		name, status, _ := strings.Cut(s, "=")
		if status == "" {
			status = "running"
		}
		out = append(out, ServiceReport{Name: name, Status: status})
	}
	return out
}

func TestApplyReport(t *testing.T) {
	targeted := Device{State: DeviceTargeted, Deadline: t0.Add(time.Hour), LastSeq: 3}
	settling := Device{State: DeviceRunning, HealthySince: t0, Deadline: t0.Add(time.Hour), LastSeq: 5}
	tests := []struct {
		name   string
		d      Device
		r      Report
		want   string
		change bool
	}{
		{"runs the release, healthy: settles", targeted, Report{Seq: 4, Release: rel, Services: running("app", "db")}, DeviceRunning, true},
		{"runs the release, a service starting: not yet", targeted, Report{Seq: 4, Release: rel, Services: running("app", "db=installing")}, DeviceTargeted, true},
		{"runs the release, a service exited: failed", targeted, Report{Seq: 4, Release: rel, Services: running("app", "db=exited")}, DeviceFailed, true},
		{"still the old release: heard from, nothing more", targeted, Report{Seq: 4, Release: prev, Services: running("app")}, DeviceTargeted, true},
		{"an update lock holds it: waiting", targeted, Report{Seq: 4, Release: prev, Services: []ServiceReport{{Name: "app", Status: "running", UpdateLock: true}}}, DeviceWaitingLock, true},
		{"fell back to the previous release: failed (hawkBit#3185)", settling, Report{Seq: 6, Release: prev, Services: running("app")}, DeviceFailed, true},
		{"healthy no longer while settling: back to installing", settling, Report{Seq: 6, Release: rel, Services: running("app=installing")}, DeviceInstalling, true},
		{"a redelivered report: nothing", settling, Report{Seq: 5, Release: prev}, DeviceRunning, false},
		{"an older report: nothing", settling, Report{Seq: 2, Release: prev}, DeviceRunning, false},
		{"a pending device: nothing", Device{State: DevicePending, LastSeq: -1}, Report{Seq: 9, Release: rel, Services: running("app")}, DevicePending, false},
		{"a terminal device: nothing", Device{State: DeviceFailed, LastSeq: 1}, Report{Seq: 9, Release: rel, Services: running("app")}, DeviceFailed, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, changed := ApplyReport(tt.d, tt.r, rel, prev, t0.Add(time.Minute))
			if got.State != tt.want || changed != tt.change {
				t.Fatalf("ApplyReport = %s (changed %v), want %s (changed %v); reason %q", got.State, changed, tt.want, tt.change, got.Reason)
			}
			if changed && got.LastSeq != tt.r.Seq {
				t.Errorf("LastSeq = %d, want %d", got.LastSeq, tt.r.Seq)
			}
			if got.State == DeviceRunning && tt.d.State != DeviceRunning && !got.HealthySince.Equal(t0.Add(time.Minute)) {
				t.Errorf("HealthySince = %v, want the report's time", got.HealthySince)
			}
			if Terminal(got.State) && !got.Deadline.IsZero() {
				t.Errorf("a terminal device keeps a deadline")
			}
		})
	}
}

func TestApplyEventOnlyMovesForward(t *testing.T) {
	d := Device{State: DeviceTargeted, Deadline: t0.Add(time.Hour)}
	steps := []struct {
		event string
		about uuid.UUID
		want  string
		moved bool
	}{
		{EventDownloadStarted, prev, DeviceTargeted, false}, // another release's event
		{EventDownloadStarted, rel, DeviceDownloading, true},
		{EventDownloadProgress, rel, DeviceDownloading, false},
		{EventInstallStarted, rel, DeviceInstalling, true},
		{EventDownloadStarted, rel, DeviceInstalling, false}, // late: does not move back
		{EventFailed, rel, DeviceFailed, true},
		{EventInstalled, rel, DeviceFailed, false}, // terminal stays
	}
	for i, s := range steps {
		var moved bool
		d, moved = ApplyEvent(d, s.event, rel, s.about, "")
		if d.State != s.want || moved != s.moved {
			t.Fatalf("step %d (%s): %s moved %v, want %s moved %v", i, s.event, d.State, moved, s.want, s.moved)
		}
	}
	if d2, _ := ApplyEvent(Device{State: DeviceInstalling}, EventRolledBack, rel, rel, ""); d2.State != DeviceFailed {
		t.Errorf("a device that rolled the update back is %s, want failed", d2.State)
	}
}

// Every non-terminal state is bounded in time: an unreached or stuck device
// never holds its group open (hawkBit#693).
func TestTickBoundsEveryState(t *testing.T) {
	timing := Timing{Settle: 2 * time.Minute}
	deadline := t0.Add(time.Hour)
	tests := []struct {
		state   string
		lastSeq int64 // -1: not heard from since targeted
		now     time.Time
		want    string
	}{
		{DeviceTargeted, -1, deadline.Add(-time.Second), DeviceTargeted},
		{DeviceTargeted, -1, deadline, DeviceUnreached},
		{DeviceTargeted, 4, deadline, DeviceTimedOut}, // heard from, never started
		{DeviceDownloading, 4, deadline, DeviceTimedOut},
		{DeviceInstalling, 4, deadline.Add(time.Minute), DeviceTimedOut},
		{DeviceWaitingLock, 4, deadline, DeviceTimedOut},
		{DevicePending, -1, deadline.Add(time.Hour), DevicePending},
		{DeviceSucceeded, 4, deadline.Add(time.Hour), DeviceSucceeded},
	}
	for _, tt := range tests {
		got, _ := Tick(Device{State: tt.state, Deadline: deadline, LastSeq: tt.lastSeq}, timing, tt.now)
		if got.State != tt.want {
			t.Errorf("Tick(%s at %s) = %s, want %s", tt.state, tt.now.Sub(deadline), got.State, tt.want)
		}
	}
	// Settling: succeeded once healthy for the settle time, not before.
	d := Device{State: DeviceRunning, HealthySince: t0, Deadline: deadline}
	if got, ch := Tick(d, timing, t0.Add(2*time.Minute-time.Second)); ch || got.State != DeviceRunning {
		t.Fatalf("settling device before its settle time: %s", got.State)
	}
	if got, ch := Tick(d, timing, t0.Add(2*time.Minute)); !ch || got.State != DeviceSucceeded {
		t.Fatalf("settled device: %s", got.State)
	}
	// Going offline while settling is a failure; at other times it is not.
	if got, ch := Disconnected(d); !ch || got.State != DeviceFailed {
		t.Fatalf("offline while settling: %s", got.State)
	}
	if got, ch := Disconnected(Device{State: DeviceDownloading}); ch || got.State != DeviceDownloading {
		t.Fatalf("offline while downloading: %s", got.State)
	}
}

func counts(pairs ...any) Counts {
	c := Counts{}
	for i := 0; i < len(pairs); i += 2 {
		c[pairs[i].(string)] = pairs[i+1].(int)
	}
	return c
}

func TestJudge(t *testing.T) {
	g := GroupSpec{SuccessThreshold: 80, ErrorThreshold: &ErrorThreshold{Percent: 20, MinSample: 5, Action: ThresholdPause}}
	tests := []struct {
		name string
		g    GroupSpec
		c    Counts
		want Verdict
	}{
		{"empty group", g, counts(), Verdict{Complete: true, Succeeded: true}},
		{"just under the success threshold", g, counts(DeviceSucceeded, 7, DeviceRunning, 3), Verdict{}},
		{"at the success threshold, before the rest finished", g, counts(DeviceSucceeded, 8, DeviceInstalling, 2), Verdict{Succeeded: true}},
		{"all done and succeeded", g, counts(DeviceSucceeded, 10), Verdict{Complete: true, Succeeded: true}},
		{"failures under the minimum sample: not yet", g, counts(DeviceFailed, 4, DeviceTargeted, 6), Verdict{}},
		{"failures over the threshold with the sample", g, counts(DeviceFailed, 2, DeviceSucceeded, 3, DeviceTargeted, 5), Verdict{Tripped: true, Action: ThresholdPause}},
		{"exactly at the error threshold is not over it", g, counts(DeviceFailed, 1, DeviceSucceeded, 4, DeviceTargeted, 5), Verdict{}},
		{"unreached counts as a failure by default", g, counts(DeviceUnreached, 3, DeviceSucceeded, 3, DeviceTargeted, 4), Verdict{Tripped: true, Action: ThresholdPause}},
		{"only the failure types named count", GroupSpec{SuccessThreshold: 100, ErrorThreshold: &ErrorThreshold{Percent: 10, MinSample: 1, Action: ThresholdAbort, FailureTypes: []string{FailureFailed}}},
			counts(DeviceUnreached, 5, DeviceSucceeded, 5), Verdict{Complete: true, Stuck: true}},
		{"complete below the threshold, not tripped: stuck", GroupSpec{SuccessThreshold: 90}, counts(DeviceSucceeded, 8, DeviceTimedOut, 2), Verdict{Complete: true, Stuck: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Judge(tt.g, tt.c); got != tt.want {
				t.Fatalf("Judge = %+v, want %+v", got, tt.want)
			}
		})
	}
	// A device deleted mid-rollout leaves the counts: the group is judged
	// on the devices it has (hawkBit#3110): 9 of 9 succeeded, where 9 of
	// 10 would not have been.
	if v := Judge(GroupSpec{SuccessThreshold: 100}, counts(DeviceSucceeded, 9)); !v.Succeeded || !v.Complete {
		t.Fatalf("after a deletion: %+v", v)
	}
}

func TestRateRamp(t *testing.T) {
	s := Spec{RatePerMinute: 10, Ramp: &Ramp{Factor: 2, EverySucceeded: 50, MaxPerMinute: 60}}
	for _, tt := range []struct {
		succeeded int
		want      float64
	}{{0, 10}, {49, 10}, {50, 20}, {100, 40}, {150, 60}, {1000, 60}} {
		if got := Rate(s, tt.succeeded); got != tt.want {
			t.Errorf("Rate after %d = %v, want %v", tt.succeeded, got, tt.want)
		}
	}
	if got := Rate(Spec{}, 100); got != 0 {
		t.Errorf("no rate = %v, want 0 (no limit)", got)
	}
}

// The bucket spreads targeting: at 60 a minute, one device a second over a
// minute of one-second steps, whatever the steps' timing.
func TestBucketPaces(t *testing.T) {
	var b Bucket
	total := 0
	for i := 0; i <= 60; i++ {
		var n int
		n, b = b.Take(60, 1000, t0.Add(time.Duration(i)*time.Second))
		total += n
	}
	if total != 61 {
		t.Fatalf("%d targeted in 60s at 60/min (one at once, then one a second), want 61", total)
	}
	// After an hour idle the burst is a tenth of a minute's worth, not an
	// hour's.
	n, _ := b.Take(60, 1000, t0.Add(time.Hour))
	if n != 6 {
		t.Fatalf("after an hour idle %d at once, want 6", n)
	}
	if n, _ := (Bucket{}).Take(0, 5000, t0); n != MaxTargetBatch {
		t.Fatalf("no rate: %d at once, want %d", n, MaxTargetBatch)
	}
}

func TestWindow(t *testing.T) {
	// Weekdays 02:00-04:00 in Berlin.
	w := Window{Cron: "0 2 * * 1-5", DurationSeconds: 2 * 3600, TimeZone: "Europe/Berlin"}
	if err := w.Check(); err != nil {
		t.Fatal(err)
	}
	berlin, _ := time.LoadLocation("Europe/Berlin")
	at := func(day, hour, minute int) time.Time { return time.Date(2026, 12, day, hour, minute, 0, 0, berlin) }
	tests := []struct {
		now  time.Time
		open bool
		next time.Time
	}{
		{at(1, 1, 59), false, at(1, 2, 0)}, // Tuesday, just before
		{at(1, 2, 0), true, at(1, 4, 0)},   // opens
		{at(1, 3, 59), true, at(1, 4, 0)},
		{at(1, 4, 0), false, at(2, 2, 0)}, // closed at the end
		{at(5, 3, 0), false, at(7, 2, 0)}, // Saturday: next Monday
	}
	for _, tt := range tests {
		open, next := w.Open(tt.now.UTC())
		if open != tt.open || !next.Equal(tt.next) {
			t.Errorf("Open(%s) = %v, %s; want %v, %s", tt.now, open, next, tt.open, tt.next)
		}
	}
	// A frequent schedule with a long window: the latest opening counts.
	every := Window{Cron: "*/5 * * * *", DurationSeconds: 600}
	if open, _ := every.Open(t0.Add(7 * time.Minute)); !open {
		t.Error("a window opening every 5 minutes for 10 is always open")
	}
	for _, bad := range []struct {
		w     Window
		field string
	}{
		{Window{Cron: "every day", DurationSeconds: 3600}, "/cron"},
		{Window{Cron: "0 2 * * *", DurationSeconds: 10}, "/duration_seconds"},
		{Window{Cron: "0 2 * * *", DurationSeconds: 3600, TimeZone: "Mars/Olympus"}, "/time_zone"},
	} {
		if err := bad.w.Check(); err == nil || err.Field != bad.field {
			t.Errorf("Check(%+v) = %v, want an error on %s", bad.w, err, bad.field)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestPlanAndLateJoiners(t *testing.T) {
	id := uuid.New()
	var devices []Candidate
	for i := range 1000 {
		tags := map[string]string{}
		if i%10 == 0 {
			tags["canary"] = "yes"
		}
		devices = append(devices, Candidate{ID: uuid.New(), Tags: tags})
	}
	groups := []GroupSpec{
		{Name: "canaries", Count: ptr(20), Tags: map[string]string{"canary": "yes"}},
		{Name: "early", Percent: ptr(10.0)},
		{Name: "rest"},
	}
	of, shares := Plan(id, devices, groups)
	sizes := make([]int, 3)
	for _, d := range devices {
		g, ok := of[d.ID]
		if !ok {
			t.Fatalf("device %s in no group", d.ID)
		}
		if g == 0 && d.Tags["canary"] != "yes" {
			t.Fatal("a device without the canary tag in the canary group")
		}
		sizes[g]++
	}
	if sizes[0] != 20 || sizes[1] != 100 || sizes[2] != 880 {
		t.Fatalf("group sizes %v, want [20 100 880]", sizes)
	}
	if math.Abs(shares[0]+shares[1]+shares[2]-1) > 1e-9 || shares[1] != 0.1 {
		t.Fatalf("shares %v", shares)
	}
	again, _ := Plan(id, devices, groups)
	for _, d := range devices {
		if again[d.ID] != of[d.ID] {
			t.Fatal("the same rollout planned twice put a device in two groups")
		}
	}
	// Late joiners spread over the groups by their stable point, not into
	// the first group (Mender puts them in phase 1); a group that ended
	// passes them to the current one.
	late := make([]int, 3)
	for range 2000 {
		late[GroupFor(id, uuid.New(), shares, 1, func(int) bool { return false })]++
	}
	for g, want := range []float64{0.02, 0.1, 0.88} {
		if got := float64(late[g]) / 2000; math.Abs(got-want) > 0.03 {
			t.Errorf("late joiners in group %d: %.3f, want about %.2f", g, got, want)
		}
	}
	if g := GroupFor(id, uuid.New(), []float64{1, 0}, 1, func(g int) bool { return g == 0 }); g != 1 {
		t.Errorf("a late joiner hashed into an ended group went to %d, want the current group 1", g)
	}
}

func TestCheck(t *testing.T) {
	ok := []GroupSpec{{Percent: ptr(10.0), SuccessThreshold: 90}, {SuccessThreshold: 90}}
	if err := Check(Spec{RatePerMinute: 10}, ok, 100); err != nil {
		t.Fatalf("a sound rollout: %v", err)
	}
	tests := []struct {
		name   string
		spec   Spec
		groups []GroupSpec
		field  string
	}{
		{"threshold over 100", Spec{}, []GroupSpec{{SuccessThreshold: 101}}, "/groups/0/success_threshold"},
		{"error threshold under 0", Spec{}, []GroupSpec{{ErrorThreshold: &ErrorThreshold{Percent: -1, MinSample: 1, Action: ThresholdPause}}}, "/groups/0/error_threshold/percent"},
		{"unknown error action", Spec{}, []GroupSpec{{ErrorThreshold: &ErrorThreshold{Percent: 5, MinSample: 1, Action: "panic"}}}, "/groups/0/error_threshold/action"},
		{"percentages over the fleet", Spec{}, []GroupSpec{{Percent: ptr(60.0)}, {Percent: ptr(50.0)}}, "/groups"},
		{"counts over the selection", Spec{}, []GroupSpec{{Count: ptr(80)}, {Count: ptr(30)}}, "/groups"},
		{"a middle group without a size", Spec{}, []GroupSpec{{}, {Percent: ptr(10.0)}}, "/groups/0"},
		{"both percent and count", Spec{}, []GroupSpec{{Percent: ptr(10.0), Count: ptr(3)}}, "/groups/0"},
		{"no groups", Spec{}, nil, "/groups"},
		{"bad cron", Spec{Window: &Window{Cron: "soon", DurationSeconds: 3600}}, ok, "/maintenance_window/cron"},
		{"ramp without a rate", Spec{Ramp: &Ramp{Factor: 2, EverySucceeded: 10}}, ok, "/ramp"},
		{"tags on the last group", Spec{}, []GroupSpec{{Percent: ptr(10.0)}, {Tags: map[string]string{"ring": "b"}}}, "/groups/1/tags"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Check(tt.spec, tt.groups, 100)
			var fes FieldErrors
			if !errors.As(err, &fes) {
				t.Fatalf("Check = %v, want FieldErrors", err)
			}
			for _, fe := range fes {
				if fe.Field == tt.field {
					return
				}
			}
			t.Fatalf("Check = %v, want an error on %s", fmt.Sprint(fes), tt.field)
		})
	}
}

// Records match their topic's schema in the AsyncAPI document.
func TestEventRecordMatchesTheDocument(t *testing.T) {
	v, err := asyncapi.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	g := 2
	for _, e := range []Event{
		{RolloutID: uuid.New(), OrgID: uuid.New(), FleetID: uuid.New(), Event: EventGroupStarted, State: Running, Group: &g, At: t0},
		{RolloutID: uuid.New(), OrgID: uuid.New(), FleetID: uuid.New(), Event: EventThresholdTripped, State: Paused, Reason: "3 of 10 failed", Actor: "scheduler", At: t0},
	} {
		r := e.Record()
		if err := v.ValidateRecord(r.Topic, r.Value); err != nil {
			t.Errorf("%s: %v\n%s", e.Event, err, r.Value)
		}
		if string(r.Key) != e.RolloutID.String() {
			t.Errorf("key %s, want the rollout id", r.Key)
		}
	}
}
