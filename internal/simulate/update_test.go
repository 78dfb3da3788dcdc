package simulate_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/rollout"
	"github.com/flock-io/flock-api/internal/simulate"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

func ptr[T any](v T) *T { return &v }

// updateFleet is a fleet, the embedded broker its devices use and the
// service client that sees what they publish.
type updateFleet struct {
	*fleet
	broker string
	sub    *subscriber
	known  map[string]bool // devices connected() returned
}

func newUpdateFleet(t *testing.T) *updateFleet {
	t.Helper()
	f := newFleet(t)
	b := startBroker(t, f.srv.Pool(t), f.deviceTokens(t, app.DeviceIssuer(apptest.PublicURL)))
	return &updateFleet{fleet: f, broker: b, sub: subscribe(t, b), known: map[string]bool{}}
}

// run starts the simulator on the fleet with cfg's update behaviour: no
// periodic traffic (so what the devices publish is their updates alone) and
// no pause between steps.
func (f *updateFleet) run(t *testing.T, devices int, cfg simulate.Config) *running {
	t.Helper()
	cfg.API, cfg.ProvisioningKey, cfg.Devices, cfg.MQTTURL = f.srv.URL, f.provKey, devices, f.broker
	cfg.SummaryEvery, cfg.Out, cfg.Log = 20*time.Millisecond, io.Discard, testLog(t)
	r := start(cfg)
	t.Cleanup(func() { r.cancel(); <-r.done })
	return r
}

// service is a service of a release the test creates.
type service struct{ name, strategy string }

// release creates a final release of the fleet with services and returns its id.
func (f *updateFleet) release(t *testing.T, services ...service) uuid.UUID {
	t.Helper()
	svcs := make([]any, 0, len(services))
	for _, s := range services {
		img := f.image(t, s.name)
		svcs = append(svcs, map[string]any{"name": s.name, "update_strategy": s.strategy,
			"images": map[string]any{"amd64": map[string]any{"image": img.Ref + ":1", "digest": img.Digest}}})
	}
	id := f.must(t, 201, "POST", "/v1/fleets/"+f.fleet.fleet+"/releases",
		map[string]any{"version": uuid.NewString(), "status": "final", "services": svcs})["id"].(string)
	return uuid.MustParse(id)
}

// target pins device to release and nudges it, as the nudger would.
func (f *updateFleet) target(t *testing.T, device string, release uuid.UUID) {
	t.Helper()
	f.must(t, 200, "PATCH", "/v1/devices/"+device, map[string]any{"pinned_release_id": release.String()})
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	if _, err := f.sub.Publish(ctx, &paho.Publish{Topic: devicetopic.Topic(uuid.MustParse(device), "target"), QoS: 1,
		Payload: []byte(`{"version":"` + uuid.NewString() + `"}`)}); err != nil {
		t.Fatalf("nudge %s: %v", device, err)
	}
}

// connected waits for r's n devices to have connected and reported their
// state (and so fetched their target), and returns their ids, sorted.
func (f *updateFleet) connected(t *testing.T, r *running, n int) []string {
	t.Helper()
	var ids []string
	testutil.Eventually(t, fmt.Sprintf("%d devices connected and reporting", n), testutil.Until(func() bool {
		ids = ids[:0]
		for _, id := range f.sub.devices() {
			if !f.known[id] && f.sub.kinds(id)[devicetopic.State] > 0 {
				ids = append(ids, id)
			}
		}
		return len(ids) == n && r.summary().TargetsFetched == int64(n)
	}))
	slices.Sort(ids)
	for _, id := range ids {
		f.known[id] = true
	}
	return ids
}

// fullState and fullEvent are the payloads as far as these tests look.
type (
	fullState struct {
		Seq              int64  `json:"seq"`
		RunningReleaseID string `json:"running_release_id"`
		Services         []struct {
			Name             string `json:"name"`
			Status           string `json:"status"`
			DownloadProgress int    `json:"download_progress"`
			UpdateLocked     bool   `json:"update_locked"`
		} `json:"services"`
	}
	fullEvent struct {
		ID        string `json:"id"`
		Type      string `json:"type"`
		ReleaseID string `json:"release_id"`
		Service   string `json:"service"`
		Progress  int    `json:"progress"`
		Error     string `json:"error"`
	}
)

// trace is what device published of its state and update events from its
// message number from on, one line each, written as plan_test.go's describe
// writes them, with release ids named by names.
type trace struct {
	lines  []string
	states []fullState
	events []fullEvent
	// order says, for each line, whether it is a state (true) or an event.
	order []bool
}

func (f *updateFleet) trace(t *testing.T, device string, from int, names map[string]string) trace {
	t.Helper()
	f.sub.mu.Lock()
	msgs := slices.Clone(f.sub.byDevice[device][from:])
	f.sub.mu.Unlock()
	var tr trace
	for _, m := range msgs {
		switch m.kind {
		case devicetopic.State:
			var s fullState
			if err := json.Unmarshal(m.payload, &s); err != nil {
				t.Fatalf("state %s: %v", m.payload, err)
			}
			line := "S " + names[s.RunningReleaseID]
			if len(s.Services) == 0 {
				line += " -"
			}
			for _, svc := range s.Services {
				line += " " + svc.Name + ":" + svc.Status
				if svc.DownloadProgress > 0 {
					line += fmt.Sprintf("/%d", svc.DownloadProgress)
				}
				if svc.UpdateLocked {
					line += "+locked"
				}
			}
			tr.lines, tr.states, tr.order = append(tr.lines, line), append(tr.states, s), append(tr.order, true)
		case devicetopic.Events:
			var e fullEvent
			if err := json.Unmarshal(m.payload, &e); err != nil {
				t.Fatalf("event %s: %v", m.payload, err)
			}
			line := "E " + e.Type + " " + e.Service
			if strings.HasPrefix(e.Type, "download") {
				line += fmt.Sprintf(" %d", e.Progress)
			}
			tr.lines, tr.events, tr.order = append(tr.lines, line), append(tr.events, e), append(tr.order, false)
		}
	}
	return tr
}

// mark is how many messages device has published so far.
func (f *updateFleet) mark(device string) int {
	f.sub.mu.Lock()
	defer f.sub.mu.Unlock()
	return len(f.sub.byDevice[device])
}

// waitFor waits until device's trace from from holds line.
func (f *updateFleet) waitFor(t *testing.T, device string, from int, names map[string]string, line string) trace {
	t.Helper()
	return f.waitUntil(t, device, from, names, "to report "+line, func(tr trace) bool { return slices.Contains(tr.lines, line) })
}

// waitUntil waits until device's trace from from meets cond.
func (f *updateFleet) waitUntil(t *testing.T, device string, from int, names map[string]string, what string, cond func(trace) bool) trace {
	t.Helper()
	var tr trace
	testutil.Eventually(t, device+" "+what, func() error {
		tr = f.trace(t, device, from, names)
		if !cond(tr) {
			return fmt.Errorf("so far:\n\t%s", strings.Join(tr.lines, "\n\t"))
		}
		return nil
	})
	return tr
}

// rolloutView replays a trace through the rollout's rules for a device
// targeted with release (previous is what it ran before), as the scheduler
// will interpret it, and returns the device's state in the rollout.
func rolloutView(t *testing.T, tr trace, release, previous uuid.UUID) rollout.Device {
	t.Helper()
	d := rollout.Device{State: rollout.DeviceTargeted, LastSeq: -1}
	si, ei := 0, 0
	for _, isState := range tr.order {
		if isState {
			s := tr.states[si]
			si++
			r := rollout.Report{Seq: s.Seq}
			if s.RunningReleaseID != "" {
				r.Release = uuid.MustParse(s.RunningReleaseID)
			}
			for _, svc := range s.Services {
				r.Services = append(r.Services, rollout.ServiceReport{Name: svc.Name, Status: svc.Status, UpdateLock: svc.UpdateLocked})
			}
			d, _ = rollout.ApplyReport(d, r, release, previous, time.Now())
			continue
		}
		e := tr.events[ei]
		ei++
		d, _ = rollout.ApplyEvent(d, e.Type, release, uuid.MustParse(e.ReleaseID), e.Error)
	}
	return d
}

// TestUpdateStrategies moves one device per strategy from a release it runs
// to a release whose service has that strategy and checks every state and
// update event it publishes, in order, as the broker delivers them.
func TestUpdateStrategies(t *testing.T) {
	f := newUpdateFleet(t)
	r0 := f.release(t, service{"app", "download-then-kill"})
	strategies := []struct {
		strategy string
		want     []string // after the nudge; R0 is the old release, R1 the new
	}{
		{"download-then-kill", []string{
			"E download_started app 0", "S R0 app:running",
			"E download_progress app 50", "S R0 app:running/50",
			"E download_finished app 100", "S R0 app:running/100",
			"S R0 app:stopped",
			"E install_started app", "S R1 app:installing",
			"E installed app", "S R1 app:running",
		}},
		{"kill-then-download", []string{
			"S R0 app:stopped",
			"E download_started app 0", "S R0 app:downloading",
			"E download_progress app 50", "S R0 app:downloading/50",
			"E download_finished app 100", "S R0 app:downloading/100",
			"E install_started app", "S R1 app:installing",
			"E installed app", "S R1 app:running",
		}},
		{"delete-then-download", []string{
			"S R0 app:stopped",
			"S R0 -",
			"E download_started app 0", "S R0 app:downloading",
			"E download_progress app 50", "S R0 app:downloading/50",
			"E download_finished app 100", "S R0 app:downloading/100",
			"E install_started app", "S R1 app:installing",
			"E installed app", "S R1 app:running",
		}},
		{"hand-over", []string{
			"E download_started app 0", "S R0 app:running",
			"E download_progress app 50", "S R0 app:running/50",
			"E download_finished app 100", "S R0 app:running/100",
			"E install_started app", "S R1 app:installing",
			"E installed app", "S R1 app:running",
		}},
	}
	r := f.run(t, len(strategies), simulate.Config{})
	devices := f.connected(t, r, len(strategies))

	// Every device installed r0 when it connected: nothing ran before.
	first := map[string]string{"": "none", r0.String(): "R0"}
	for _, d := range devices {
		tr := f.waitFor(t, d, 0, first, "S R0 app:running")
		want := []string{
			"E download_started app 0", "S none app:downloading",
			"E download_progress app 50", "S none app:downloading/50",
			"E download_finished app 100", "S none app:downloading/100",
			"E install_started app", "S R0 app:installing",
			"E installed app", "S R0 app:running"}
		if !slices.Equal(tr.lines, want) {
			t.Fatalf("device %s's first install:\n\t%s\nwant:\n\t%s", d, strings.Join(tr.lines, "\n\t"), strings.Join(want, "\n\t"))
		}
	}

	for i, c := range strategies {
		t.Run(c.strategy, func(t *testing.T) {
			device := devices[i]
			r1 := f.release(t, service{"app", c.strategy})
			names := map[string]string{"": "none", r0.String(): "R0", r1.String(): "R1"}
			from := f.mark(device)
			f.target(t, device, r1)
			tr := f.waitFor(t, device, from, names, "S R1 app:running")
			if !slices.Equal(tr.lines, c.want) {
				t.Errorf("published:\n\t%s\nwant:\n\t%s", strings.Join(tr.lines, "\n\t"), strings.Join(c.want, "\n\t"))
			}
			ids := map[string]bool{}
			for _, e := range tr.events {
				if e.ReleaseID != r1.String() {
					t.Errorf("event %+v is not about the new release", e)
				}
				ids[e.ID] = true
			}
			if len(ids) != len(tr.events) {
				t.Errorf("events share ids: %+v", tr.events)
			}
			last := int64(0)
			for _, s := range tr.states {
				if s.Seq <= last {
					t.Errorf("state seq %d after %d", s.Seq, last)
				}
				last = s.Seq
			}
			if d := rolloutView(t, tr, r1, r0); d.State != rollout.DeviceRunning {
				t.Errorf("a rollout sees the device %s (%s), want running", d.State, d.Reason)
			}
		})
	}

	sum, err := r.stop(t)
	if err != nil {
		t.Fatal(err)
	}
	// Steps without a pause go faster than the broker's rate for a device
	// (20 messages/s): it refuses some, and the device sends them again,
	// which the traces above show arrived whole and in order.
	if want := int64(2 * len(strategies)); sum.UpdatesDone != want || sum.UpdatesFailed != 0 || sum.UpdatesLocked != 0 || sum.PublishErrors != 0 {
		t.Errorf("summary %s: want %d updates done, none failed or locked, no publish errors", sum, want)
	}
	f.sub.mu.Lock()
	defer f.sub.mu.Unlock()
	for _, p := range f.sub.invalid {
		t.Error(p)
	}
}

// TestUpdateLocks: a device that holds an update lock reports it on its
// first service and stays on its release, which a rollout counts as
// waiting; it updates once the lock lets go. A new target while it waits
// replaces the update without starting the lock again, and a target that
// goes back to the running release ends the wait with nothing installed.
func TestUpdateLocks(t *testing.T) {
	f := newUpdateFleet(t)
	r0 := f.release(t, service{"app", "download-then-kill"}, service{"db", "download-then-kill"})

	t.Run("the device updates once the lock lets go", func(t *testing.T) {
		r := f.run(t, 1, simulate.Config{Name: "short", LockShare: 1, LockFor: 200 * time.Millisecond})
		device := f.connected(t, r, 1)[0]
		names := map[string]string{"": "none", r0.String(): "R0"}
		// Nothing ran before the first install, so nothing held it.
		f.waitFor(t, device, 0, names, "S R0 app:running db:running")

		r1 := f.release(t, service{"app", "kill-then-download"}, service{"db", "download-then-kill"})
		names[r1.String()] = "R1"
		from := f.mark(device)
		f.target(t, device, r1)
		tr := f.waitFor(t, device, from, names, "S R1 app:running db:running")
		if tr.lines[0] != "S R0 app:running+locked db:running" || tr.lines[1] != "S R0 app:stopped db:running" {
			t.Errorf("published:\n\t%s\nwant the lock on app first, then app stopped", strings.Join(tr.lines, "\n\t"))
		}
		locked := trace{lines: tr.lines[:1], states: tr.states[:1], order: tr.order[:1]}
		if d := rolloutView(t, locked, r1, r0); d.State != rollout.DeviceWaitingLock {
			t.Errorf("while locked a rollout sees the device %s, want %s", d.State, rollout.DeviceWaitingLock)
		}
		if d := rolloutView(t, tr, r1, r0); d.State != rollout.DeviceRunning {
			t.Errorf("after the lock a rollout sees the device %s (%s), want running", d.State, d.Reason)
		}
		testutil.Eventually(t, "the summary to count the locked update", testutil.Until(func() bool {
			s := r.summary()
			return s.UpdatesLocked == 1 && s.UpdatesDone == 2
		}))
	})

	t.Run("a new target while locked", func(t *testing.T) {
		ra := f.release(t, service{"app", "hand-over"}, service{"db", "hand-over"})
		r := f.run(t, 1, simulate.Config{Name: "long", LockShare: 1, LockFor: time.Hour})
		device := f.connected(t, r, 1)[0]
		names := map[string]string{"": "none", ra.String(): "RA"}
		f.waitFor(t, device, 0, names, "S RA app:running db:running")

		from := f.mark(device)
		rb := f.release(t, service{"app", "hand-over"})
		f.target(t, device, rb)
		f.waitFor(t, device, from, names, "S RA app:running+locked db:running")
		// Another release while it waits: the same wait, for the new one.
		rc := f.release(t, service{"app", "hand-over"})
		f.target(t, device, rc)
		f.waitUntil(t, device, from, names, "to report the lock again", func(tr trace) bool { return len(tr.lines) == 2 })
		// Back to the release it runs: the wait ends, nothing installed.
		f.target(t, device, ra)
		tr := f.waitUntil(t, device, from, names, "to report no lock", func(tr trace) bool { return len(tr.lines) == 3 })
		want := []string{"S RA app:running+locked db:running", "S RA app:running+locked db:running", "S RA app:running db:running"}
		if !slices.Equal(tr.lines, want) {
			t.Errorf("published:\n\t%s\nwant:\n\t%s", strings.Join(tr.lines, "\n\t"), strings.Join(want, "\n\t"))
		}
		sum, err := r.stop(t)
		if err != nil {
			t.Fatal(err)
		}
		if sum.UpdatesLocked != 1 || sum.UpdatesDone != 1 || sum.UpdatesFailed != 0 {
			t.Errorf("summary %s: want the first install done and one locked update, not counted again when replaced", sum)
		}
	})
}

// TestUpdateFailures: the devices Fails names fail to start a release (its
// first service failed, a failed update event), the others run it, and
// every one of them goes back to the release it ran before.
func TestUpdateFailures(t *testing.T) {
	const n, share = 4, 0.4
	f := newUpdateFleet(t)
	r := f.run(t, n, simulate.Config{FailShare: share})
	devices := f.connected(t, r, n)
	ids := make([]uuid.UUID, n)
	for i, d := range devices {
		ids[i] = uuid.MustParse(d)
	}
	svcs := []service{{"app", "download-then-kill"}, {"db", "kill-then-download"}}
	// A release no device fails, and one some fail and others do not: the
	// choice is a hash of device and release, so the test makes releases
	// until it has both.
	choose := func(what string, ok func(fails int) bool) uuid.UUID {
		for range 100 {
			rel := f.release(t, svcs...)
			fails := 0
			for _, id := range ids {
				if simulate.Fails(id, rel, share) {
					fails++
				}
			}
			if ok(fails) {
				return rel
			}
		}
		t.Fatalf("no release of 100 is %s", what)
		return uuid.Nil
	}
	r0 := choose("failed by no device", func(fails int) bool { return fails == 0 })
	r1 := choose("failed by some devices only", func(fails int) bool { return fails > 0 && fails < n })
	names := map[string]string{"": "none", r0.String(): "R0", r1.String(): "R1"}

	for _, d := range devices {
		f.target(t, d, r0)
	}
	for _, d := range devices {
		f.waitFor(t, d, 0, names, "S R0 app:running db:running")
	}

	failed := 0
	for i, d := range devices {
		from := f.mark(d)
		f.target(t, d, r1)
		if !simulate.Fails(ids[i], r1, share) {
			tr := f.waitFor(t, d, from, names, "S R1 app:running db:running")
			if slices.ContainsFunc(tr.events, func(e fullEvent) bool { return e.Type == "failed" }) {
				t.Errorf("device %s runs R1 but published a failed event: %+v", d, tr.events)
			}
			if dv := rolloutView(t, tr, r1, r0); dv.State != rollout.DeviceRunning {
				t.Errorf("device %s: a rollout sees %s (%s), want running", d, dv.State, dv.Reason)
			}
			continue
		}
		failed++
		tr := f.waitFor(t, d, from, names, "S R1 app:failed db:running")
		if got := tr.lines[len(tr.lines)-3:]; !slices.Equal(got, []string{"E installed db", "E failed app", "S R1 app:failed db:running"}) {
			t.Errorf("device %s ends its update with\n\t%s\nwant installed db, failed app, app failed", d, strings.Join(got, "\n\t"))
		}
		e := tr.events[len(tr.events)-1]
		if e.Type != "failed" || e.Service != "app" || e.ReleaseID != r1.String() || e.Error == "" {
			t.Errorf("device %s's last event %+v, want app failed on R1 with an error", d, e)
		}
		if dv := rolloutView(t, tr, r1, r0); dv.State != rollout.DeviceFailed {
			t.Errorf("device %s: a rollout sees %s, want failed", d, dv.State)
		}
	}

	// Back to the release each ran: it runs again, failed before or not.
	for _, d := range devices {
		from := f.mark(d)
		f.target(t, d, r0)
		tr := f.waitFor(t, d, from, names, "S R0 app:running db:running")
		if slices.ContainsFunc(tr.events, func(e fullEvent) bool { return e.Type == "failed" || e.ReleaseID != r0.String() }) {
			t.Errorf("device %s going back to R0 published %+v", d, tr.events)
		}
	}

	sum, err := r.stop(t)
	if err != nil {
		t.Fatal(err)
	}
	if sum.UpdatesFailed != int64(failed) || sum.UpdatesDone != int64(2*n+n-failed) || sum.UpdatesLocked != 0 {
		t.Errorf("summary %s: want %d failed, %d done", sum, failed, 2*n+n-failed)
	}
}

// TestLocksAndFailsShares: the share of devices Locks and Fails pick is
// about the share asked for, 0 picks none and 1 all, and which devices fail
// depends on the release.
func TestLocksAndFailsShares(t *testing.T) {
	const n = 20000
	r1, r2 := uuid.New(), uuid.New()
	for _, share := range []float64{0, 0.1, 0.5, 1} {
		locks, fails, fails2, both := 0, 0, 0, 0
		for i := range n {
			d := uuid.NewSHA1(uuid.NameSpaceOID, fmt.Appendf(nil, "device-%d", i))
			l, f1, f2 := simulate.Locks(d, share), simulate.Fails(d, r1, share), simulate.Fails(d, r2, share)
			if simulate.Locks(d, share) != l || simulate.Fails(d, r1, share) != f1 {
				t.Fatal("Locks or Fails answers differently for the same device")
			}
			locks, fails, fails2 = locks+b2i(l), fails+b2i(f1), fails2+b2i(f2)
			both += b2i(f1 && f2)
		}
		for what, got := range map[string]int{"locks": locks, "fails release 1": fails, "fails release 2": fails2} {
			if frac := float64(got) / n; frac < share-0.02 || frac > share+0.02 {
				t.Errorf("share %v: %s picks %.3f of the devices", share, what, frac)
			}
		}
		// Independent per release: both fail for about share² of them.
		if frac := float64(both) / n; frac < share*share-0.02 || frac > share*share+0.02 {
			t.Errorf("share %v: %.3f of the devices fail both releases, want about %.3f", share, frac, share*share)
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
