package simulate

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/client"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/devicetopic"
)

// Locks reports whether a device of a simulation with the given lock share
// holds an update lock whenever an update arrives. The choice is a stable
// hash of the device's uuid, so a test (or someone watching a rollout) can
// tell in advance which devices will wait; about share of all devices do.
func Locks(device uuid.UUID, share float64) bool {
	return fraction("lock", device) < share
}

// Fails reports whether a device of a simulation with the given fail share
// fails to start release. The choice is a stable hash of the device's and
// the release's uuids, so each release fails on its own about share of the
// devices, the devices that fail are independent of those that lock, and a
// device never fails a release it has run successfully before: a rollback
// to its previous release works.
func Fails(device, release uuid.UUID, share float64) bool {
	return fraction("fail", device, release) < share
}

// fraction maps its arguments to a number in [0, 1), the same for the same
// arguments in every process.
func fraction(domain string, ids ...uuid.UUID) float64 {
	h := sha256.New()
	h.Write([]byte(domain))
	for _, id := range ids {
		h.Write(id[:])
	}
	// 53 bits: every value exact in a float64, so share 1 means all.
	return float64(binary.BigEndian.Uint64(h.Sum(nil))>>11) / (1 << 53)
}

// view is what the device's reported state says it runs: a release
// (uuid.Nil for none) and that release's services, each in its step of an
// update. The schema names the release once per state, not per service,
// so a service of the new release reports under the old release's id until
// the device starts installing the new one, and from then on under the new.
type view struct {
	release  uuid.UUID
	services []events.ServiceStatus
}

func (v view) clone() view {
	return view{release: v.release, services: slices.Clone(v.services)}
}

func (v view) find(name string) int {
	return slices.IndexFunc(v.services, func(s events.ServiceStatus) bool { return s.Name == name })
}

// set changes service i's status. Statuses are pointers in the generated
// type; each change makes a new one, so the views of earlier steps, which
// share the slice's pointers, keep theirs.
func (v view) set(i int, st events.ServiceState, progress int) {
	v.services[i].Status = ptr(st)
	v.services[i].DownloadProgress = progress
}

func statusOf(s events.ServiceStatus) events.ServiceState {
	if s.Status == nil {
		return events.ServiceStateStopped
	}
	return *s.Status
}

// targetService is a service of the release to install, as an update needs it.
type targetService struct {
	name     string
	strategy client.UpdateStrategy
}

func targetServices(svcs []client.TargetService) []targetService {
	out := make([]targetService, len(svcs))
	for i, s := range svcs {
		st := s.UpdateStrategy
		if !st.Valid() {
			// A server that names none (older) or one this simulator does
			// not know: balena's default.
			st = client.DownloadThenKill
		}
		out[i] = targetService{name: s.Name, strategy: st}
	}
	return out
}

// What each step of an update does; the device logs it.
const (
	stepLock     = "lock"     // an update lock holds the first service; the device waits
	stepStop     = "stop"     // kill-then-download and delete-then-download stop the old container
	stepDelete   = "delete"   // delete-then-download deletes the old container and image
	stepDownload = "download" // the new images download (started, half way, finished)
	stepKill     = "kill"     // download-then-kill stops the old container; services the new release drops stop
	stepInstall  = "install"  // the new containers are created and start; the state names the new release
	stepStarted  = "started"  // they run, or the first one failed to start
)

// step is one step of an update: its update events, published in order,
// then a reported state saying view. The next step follows a step time
// later (a lock step: when the lock lets go).
type step struct {
	what   string
	events []UpdateStep
	view   view
}

// planInput is what an update starts from and goes to.
type planInput struct {
	from     view
	release  uuid.UUID
	attempt  int
	services []targetService
	// lock: an update lock holds the first service of from (when it runs)
	// before anything changes.
	lock bool
	// fail: the first service of release fails to start.
	fail bool
}

// plan is the steps a device goes through to move from in.from to
// in.release, as balena's supervisor does, service by service according to
// each one's strategy and phase by phase across services:
//
//   - download-then-kill: the new image downloads while the old container
//     runs (reported running, with download_progress), then the old stops,
//     then the new is installed and runs;
//   - kill-then-download: the old stops first (reported stopped), then the
//     image downloads (downloading), then install;
//   - delete-then-download: the old stops, its container and image are
//     deleted (the service drops out of the report), then as kill-then-download;
//   - hand-over: the new image downloads beside the running old container,
//     the new container starts next to it, and the old stops once the new
//     runs: the service is never reported stopped.
//
// Services of the old release that the new one drops stop with the
// download-then-kill services.
func plan(in planInput) []step {
	v := in.from.clone()
	var steps []step
	emit := func(what string, evs []UpdateStep) {
		steps = append(steps, step{what: what, events: evs, view: v.clone()})
	}
	event := func(typ events.UpdateEventType, service string, progress int) UpdateStep {
		return UpdateStep{Release: in.release, Attempt: in.attempt, Type: typ, Service: service, Progress: progress}
	}
	strategy := map[string]client.UpdateStrategy{}
	for _, s := range in.services {
		strategy[s.name] = s.strategy
	}

	// A lock is held by a running service, so only a device that runs a
	// release can be held.
	if in.lock && v.release != uuid.Nil && len(v.services) > 0 && statusOf(v.services[0]) == events.ServiceStateRunning {
		v.services[0].UpdateLocked = true
		emit(stepLock, nil)
		v.services[0].UpdateLocked = false
	}

	changed := false
	for _, s := range in.services {
		if s.strategy != client.KillThenDownload && s.strategy != client.DeleteThenDownload {
			continue
		}
		if i := v.find(s.name); i >= 0 && statusOf(v.services[i]) != events.ServiceStateStopped {
			v.set(i, events.ServiceStateStopped, 0)
			changed = true
		}
	}
	if changed {
		emit(stepStop, nil)
	}

	changed = false
	for _, s := range in.services {
		if i := v.find(s.name); i >= 0 && s.strategy == client.DeleteThenDownload {
			v.services = slices.Delete(v.services, i, i+1)
			changed = true
		}
	}
	if changed {
		emit(stepDelete, nil)
	}

	if len(in.services) > 0 {
		for _, p := range []struct {
			typ      events.UpdateEventType
			progress int
		}{
			{events.UpdateEventTypeDownloadStarted, 0},
			{events.UpdateEventTypeDownloadProgress, 50},
			{events.UpdateEventTypeDownloadFinished, 100},
		} {
			evs := make([]UpdateStep, 0, len(in.services))
			for _, s := range in.services {
				evs = append(evs, event(p.typ, s.name, p.progress))
				switch i := v.find(s.name); {
				case i < 0:
					v.services = append(v.services, events.ServiceStatus{Name: s.name,
						Status: ptr(events.ServiceStateDownloading), DownloadProgress: p.progress})
				case statusOf(v.services[i]) == events.ServiceStateRunning:
					// The old container serves on while the new image
					// downloads (download-then-kill, hand-over).
					v.services[i].DownloadProgress = p.progress
				default:
					v.set(i, events.ServiceStateDownloading, p.progress)
				}
			}
			emit(stepDownload, evs)
		}
	}

	changed = false
	for i, s := range v.services {
		st, kept := strategy[s.Name]
		stop := statusOf(s) == events.ServiceStateRunning && st == client.DownloadThenKill ||
			!kept && statusOf(s) != events.ServiceStateStopped
		if stop {
			v.set(i, events.ServiceStateStopped, 0)
			changed = true
		}
	}
	if changed {
		emit(stepKill, nil)
	}

	evs := make([]UpdateStep, 0, len(in.services))
	v = view{release: in.release, services: make([]events.ServiceStatus, 0, len(in.services))}
	for _, s := range in.services {
		evs = append(evs, event(events.UpdateEventTypeInstallStarted, s.name, 0))
		v.services = append(v.services, events.ServiceStatus{Name: s.name, Status: ptr(events.ServiceStateInstalling)})
	}
	emit(stepInstall, evs)

	// Hand-over services' old containers stop here, once the new ones run;
	// the report, one entry per service, has nothing more to say of them.
	evs = make([]UpdateStep, 0, len(in.services))
	for i, s := range in.services {
		if in.fail && i == 0 {
			continue
		}
		evs = append(evs, event(events.UpdateEventTypeInstalled, s.name, 0))
		v.set(i, events.ServiceStateRunning, 0)
	}
	if in.fail && len(in.services) > 0 {
		name := in.services[0].name
		e := event(events.UpdateEventTypeFailed, name, 0)
		e.Error = "simulated failure: " + name + " exited right after starting"
		evs = append(evs, e)
		v.set(0, events.ServiceStateFailed, 0)
	}
	if len(evs) > 0 {
		emit(stepStarted, evs)
	}
	return steps
}

// update is a device's update in progress.
type update struct {
	release uuid.UUID
	version string
	attempt int
	target  []client.TargetService // the release's services, as the target state names them
	from    view                   // what the device reported before the update began
	steps   []step
	next    int       // the step to publish next
	lockEnd time.Time // when the update lock lets go; zero without one
	fails   bool

	// With Config.PullImages the images are fetched from the first
	// download step on, and the last one (download finished) waits for
	// them: fetch carries the outcome, fetched says it arrived.
	fetch   chan error
	fetched bool
}

// downloadSteps are the indexes of u's first and last download steps, -1
// without any.
func (u *update) downloadSteps() (first, last int) {
	first, last = -1, -1
	for i, st := range u.steps {
		if st.what == stepDownload {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	return first, last
}

// awaitsImages reports whether u's next step must wait for its images.
func (u *update) awaitsImages() bool {
	if u.fetch == nil || u.fetched {
		return false
	}
	_, last := u.downloadSteps()
	return u.next >= last
}

// untouched reports whether nothing has changed on the device yet: no step
// published, or only the lock's. Such an update gives way to a new target
// at once; one under way is finished first.
func (u *update) untouched() bool {
	return u.next == 0 || u.next == 1 && u.steps[0].what == stepLock
}

// startUpdate begins moving to the release ts names. replaces is the
// untouched update this one takes the place of (nil for none): the device
// starts from what it ran before that one, and a lock it held holds on
// until its time, not again from now.
func (d *device) startUpdate(ts *client.TargetState, replaces *update) {
	rel := ts.Release.Id
	svcs := targetServices(ts.Services)
	from := d.payloads.view()
	lockEnd := time.Time{}
	if replaces != nil {
		from, lockEnd = replaces.from, replaces.lockEnd
	} else if Locks(d.id, d.s.cfg.LockShare) {
		lockEnd = time.Now().Add(d.s.lockFor)
	}
	d.attempts++
	u := &update{
		release: rel, version: ts.Release.Version, attempt: d.attempts, target: ts.Services, from: from, lockEnd: lockEnd,
		fails: len(svcs) > 0 && Fails(d.id, rel, d.s.cfg.FailShare),
	}
	u.steps = plan(planInput{from: from, release: rel, attempt: d.attempts, services: svcs,
		lock: time.Now().Before(lockEnd), fail: u.fails})
	if u.steps[0].what == stepLock && replaces == nil {
		d.s.stats.updatesLocked.Add(1)
	}
	d.update = u
	d.log.Debug("update started", "release_id", rel, "version", u.version, "from_release_id", from.release,
		"steps", len(u.steps), "locked_until", lockEnd, "fails", u.fails)
	d.stepTimer.Reset(0)
}

// dropUpdate abandons an untouched update: the target went back to what the
// device runs. It reports its state again, without the lock.
func (d *device) dropUpdate(ctx context.Context, cm *autopaho.ConnectionManager) {
	u := d.update
	d.update = nil
	d.stepTimer.Stop()
	d.payloads.SetServices(u.from.release, u.from.services)
	d.log.Debug("update abandoned: the target is the running release again", "release_id", u.release)
	d.publish(ctx, cm, devicetopic.State, d.payloads.State())
}

// advance publishes the update's next step and schedules the one after, or
// ends the update and looks at the target again if it changed meanwhile.
func (d *device) advance(ctx context.Context, cm *autopaho.ConnectionManager) {
	u := d.update
	if first, _ := u.downloadSteps(); u.next == first && d.images != nil && u.fetch == nil {
		d.startFetch(ctx, u)
	}
	st := u.steps[u.next]
	u.next++
	for _, e := range st.events {
		d.publish(ctx, cm, devicetopic.Events, d.payloads.UpdateEvent(e))
	}
	d.payloads.SetServices(st.view.release, st.view.services)
	d.publish(ctx, cm, devicetopic.State, d.payloads.State())
	d.log.Debug("update step", "release_id", u.release, "step", st.what, "events", len(st.events))
	if u.next < len(u.steps) {
		pause := d.s.cfg.StepTime
		if st.what == stepLock {
			pause = max(0, time.Until(u.lockEnd))
		}
		d.stepTimer.Reset(pause)
		return
	}
	d.update = nil
	if u.fails {
		d.s.stats.updatesFailed.Add(1)
		d.log.Debug("release failed to start", "release_id", u.release, "version", u.version)
	} else {
		d.s.stats.updatesDone.Add(1)
		d.log.Debug("release applied", "release_id", u.release, "version", u.version)
	}
	if d.resync {
		d.resync = false
		d.syncTarget(ctx, cm, false)
	}
}

// startFetch fetches u's images on a goroutine of their own; the loop
// learns the outcome from u.fetch (imagesFetched).
func (d *device) startFetch(ctx context.Context, u *update) {
	u.fetch = make(chan error, 1)
	rel, svcs := u.release, u.target
	d.fetches.Go(func() { u.fetch <- d.fetchImages(ctx, rel, svcs) })
}

// imagesFetched takes the outcome of u's fetch: on a failure the update
// ends failed at its next step (downloadFailed); either way the steps
// waiting for it go on when their time comes.
func (d *device) imagesFetched(ctx context.Context, u *update, err error) {
	u.fetched = true
	if err == nil || ctx.Err() != nil {
		return // fetched, or the run is ending
	}
	d.s.warn("image-download", "an update failed: its images could not be fetched", "device", d.id.String(),
		"release_id", u.release, "error", err)
	u.downloadFailed(err)
}
