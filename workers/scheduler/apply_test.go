package scheduler

import (
	"strings"
	"testing"
	"time"

	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/rollout"
	"github.com/flock-io/flock-api/internal/testutil/promtest"
	st "github.com/flock-io/flock-api/workers/scheduler/schedulertest"
)

// A report is applied once: the same record twice, or an older one, changes
// nothing; update events only move a device forward, whatever order they
// arrive in; a disconnect from before a device started settling is stale.
func TestReportsApplyOnce(t *testing.T) {
	h := newHarness(t, 4, nil)
	id := h.start(oneGroup(time.Hour))
	h.consume()
	h.step(t0)
	if got := h.states(id); got[rollout.DeviceTargeted] != 4 {
		t.Fatalf("after the first step: %v, want 4 targeted", got)
	}
	f, a, b, c := h.f, h.f.Devices[0], h.f.Devices[1], h.f.Devices[2]
	run := st.Report(f, a, 5, f.New, t0.Add(10*time.Second), st.Running("app"))
	h.send(run, run, st.Report(f, a, 3, f.Old, t0.Add(11*time.Second), st.Running("app")))
	d := h.wantState(id, a, rollout.DeviceRunning)
	if d.LastSeq != 5 || !d.HealthySince.Equal(t0.Add(10*time.Second)) {
		t.Errorf("device a: last_seq %d healthy since %v, want 5 and the first report's time", d.LastSeq, d.HealthySince)
	}
	if got := promtest.Value(h.s.m.changed); got != 1 {
		t.Errorf("%v rows changed, want 1: the repeated and the older report change nothing", got)
	}

	// Events out of order: installing, then a late download_started.
	h.send(st.Event(f, b, events.UpdateEventTypeInstallStarted, f.New, t0.Add(20*time.Second)),
		st.Event(f, b, events.UpdateEventTypeDownloadStarted, f.New, t0.Add(15*time.Second)),
		st.Event(f, b, events.UpdateEventTypeDownloadStarted, f.Old, t0.Add(21*time.Second)))
	h.wantState(id, b, rollout.DeviceInstalling)

	// A disconnect of the connection before the one that reported running
	// is stale; one after it fails the device (it may be boot-looping).
	h.send(st.Report(f, c, 1, f.New, t0.Add(30*time.Second), st.Running("app")))
	h.send(st.Disconnect(f, c, 1, t0.Add(29*time.Second)))
	h.wantState(id, c, rollout.DeviceRunning)
	h.send(st.Disconnect(f, c, 2, t0.Add(31*time.Second)))
	if d := h.wantState(id, c, rollout.DeviceFailed); !strings.Contains(d.Reason, "offline") {
		t.Errorf("reason %q, want it to say the device went offline", d.Reason)
	}
	if got := promtest.Value(h.s.m.changed); got != 4 {
		t.Errorf("%v rows changed, want 4", got)
	}
	if got := promtest.Value(h.s.m.undecodable); got != 0 {
		t.Errorf("%v records did not decode", got)
	}
}

// Success means healthy for the settle time: a device that runs the
// release healthy succeeds only once the settle time has passed; one that
// falls back to its previous release, runs it with a service exited, or
// goes offline while settling has failed (hawkBit#3185).
func TestSuccessMeansHealthyForTheSettleTime(t *testing.T) {
	h := newHarness(t, 4, nil)
	id := h.start(oneGroup(time.Minute))
	h.consume()
	h.step(t0)
	f := h.f
	ok, fellBack, exited, offline := f.Devices[0], f.Devices[1], f.Devices[2], f.Devices[3]
	at := t0.Add(10 * time.Second)
	h.send(st.Report(f, ok, 1, f.New, at, st.Running("app")),
		st.Report(f, fellBack, 1, f.New, at, st.Running("app")),
		st.Report(f, fellBack, 2, f.Old, at.Add(20*time.Second), st.Running("app")),
		st.Report(f, exited, 1, f.New, at, st.Status("app", events.ServiceStateExited)),
		st.Report(f, offline, 1, f.New, at, st.Running("app")),
		st.Disconnect(f, offline, 1, at.Add(30*time.Second)))
	h.step(at.Add(59 * time.Second))
	h.wantState(id, ok, rollout.DeviceRunning)
	h.step(at.Add(time.Minute))
	h.wantState(id, ok, rollout.DeviceSucceeded)
	for _, dev := range []struct {
		id     [16]byte
		reason string
	}{{fellBack, "fell back"}, {exited, "not running"}, {offline, "offline"}} {
		if d := h.wantState(id, dev.id, rollout.DeviceFailed); !strings.Contains(d.Reason, dev.reason) {
			t.Errorf("reason %q, want %q", d.Reason, dev.reason)
		}
	}
	// One of four succeeded, below 100%, nothing tripped: stuck.
	r := h.rollout(id)
	if r.State != rollout.Paused || !strings.Contains(r.StateReason, "1 of 4 devices succeeded") {
		t.Errorf("rollout %s (%q), want paused for a person, naming the counts", r.State, r.StateReason)
	}
}
