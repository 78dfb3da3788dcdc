package rollout

import (
	"time"

	"github.com/google/uuid"
)

// A device's states in a rollout. Every state but pending has a deadline
// or is terminal, so no device holds its group open forever: a device that
// is targeted and never heard from ends unreached, one that stops half way
// ends timed out.
const (
	DevicePending     = "pending"      // its group has not targeted it yet
	DeviceTargeted    = "targeted"     // told to run the release; not heard from since
	DeviceDownloading = "downloading"  // update events say it is downloading
	DeviceInstalling  = "installing"   // or installing
	DeviceWaitingLock = "waiting_lock" // an update lock holds one of its services
	DeviceRunning     = "running"      // runs the release, healthy, settling
	DeviceSucceeded   = "succeeded"    // ran the release healthy for the settle time
	DeviceFailed      = "failed"       // reported a failure, fell back, or went offline while settling
	DeviceTimedOut    = "timed_out"    // still updating at its deadline
	DeviceUnreached   = "unreached"    // targeted, never heard from by its deadline (offline)
	DeviceRolledBack  = "rolled_back"  // put back on its previous release by an abort
)

// DeviceStates lists them, in the order a device usually meets them.
var DeviceStates = []string{DevicePending, DeviceTargeted, DeviceDownloading, DeviceInstalling, DeviceWaitingLock,
	DeviceRunning, DeviceSucceeded, DeviceFailed, DeviceTimedOut, DeviceUnreached, DeviceRolledBack}

// Terminal reports whether a device's part in its group is over.
func Terminal(state string) bool {
	switch state {
	case DeviceSucceeded, DeviceFailed, DeviceTimedOut, DeviceUnreached, DeviceRolledBack:
		return true
	}
	return false
}

// Touched reports whether the rollout has changed what the device runs:
// every state after pending (a rollback puts these back).
func Touched(state string) bool { return state != DevicePending && state != DeviceRolledBack }

// Failure types an error threshold may count (AWS IoT Jobs' failureType).
const (
	FailureFailed    = DeviceFailed
	FailureTimedOut  = DeviceTimedOut
	FailureUnreached = DeviceUnreached
)

// Device is a device's row in a rollout, as the rules see it.
type Device struct {
	ID           uuid.UUID
	State        string
	Reason       string
	Deadline     time.Time // zero when none
	HealthySince time.Time // zero unless running
	LastSeq      int64     // newest report applied
}

// ServiceReport is one service in a device's report.
type ServiceReport struct {
	Name       string
	Status     string // downloading, installing, running, stopped, exited, failed
	UpdateLock bool   // an update lock holds it
}

// Report is what a device says it runs (ReportedState).
type Report struct {
	Seq      int64
	Release  uuid.UUID // uuid.Nil when it runs none
	Services []ServiceReport
}

// healthy: every service runs (a release with no services is healthy when
// it is reported running at all).
func (r Report) healthy() bool {
	for _, s := range r.Services {
		if s.Status != "running" {
			return false
		}
	}
	return true
}

func (r Report) locked() bool {
	for _, s := range r.Services {
		if s.UpdateLock {
			return true
		}
	}
	return false
}

func (r Report) failedService() (string, bool) {
	for _, s := range r.Services {
		if s.Status == "failed" || s.Status == "exited" {
			return s.Name, true
		}
	}
	return "", false
}

// Timing is the per-device time rules of a rollout and its group.
type Timing struct {
	// Settle: a device counts as succeeded once it has reported the release
	// running with every service running for this long.
	Settle time.Duration
}

// ApplyReport is what a report does to a device targeted with release
// (previous is the release it ran before): it returns the device after the
// report, and whether it changed. A report not newer than the last applied
// one changes nothing, so a redelivered or reordered report is harmless.
//
// Success means healthy, not installed: running the release with every
// service running starts the settle time; running it with a service failed
// or exited, or running the previous release again after it had started
// (it fell back), is a failure.
func ApplyReport(d Device, r Report, release, previous uuid.UUID, now time.Time) (Device, bool) {
	if r.Seq <= d.LastSeq || d.State == DevicePending || Terminal(d.State) {
		return d, false
	}
	before := d
	d.LastSeq = r.Seq
	switch {
	case r.Release == release:
		if name, bad := r.failedService(); bad {
			d = to(d, DeviceFailed, "service "+name+" is not running the release")
		} else if r.healthy() {
			if d.State != DeviceRunning {
				d = to(d, DeviceRunning, "")
				d.HealthySince = now
			}
		} else if d.State == DeviceRunning {
			// Healthy no longer: the settle time starts again when it is.
			d = to(d, DeviceInstalling, "services starting")
		}
	case r.locked():
		d = to(d, DeviceWaitingLock, "an update lock holds a service")
	case d.State == DeviceRunning && r.Release != release:
		d = to(d, DeviceFailed, "fell back from the release")
	case d.State == DeviceTargeted || d.State == DeviceWaitingLock:
		// Still on the old release: heard from, not started yet.
		if d.State == DeviceWaitingLock {
			d = to(d, DeviceTargeted, "")
		}
	}
	return d, d.State != before.State || d.LastSeq != before.LastSeq
}

// Update event types (asyncapi/flock.yaml UpdateEventType).
const (
	EventDownloadStarted  = "download_started"
	EventDownloadProgress = "download_progress"
	EventDownloadFinished = "download_finished"
	EventInstallStarted   = "install_started"
	EventInstalled        = "installed"
	EventFailed           = "failed"
	EventRolledBack       = "rolled_back"
)

// ApplyEvent is what an update event about release does to a device. An
// event of another release changes nothing; progress only moves forward,
// so a repeated or late event is harmless.
func ApplyEvent(d Device, eventType string, release, about uuid.UUID, detail string) (Device, bool) {
	if about != release || d.State == DevicePending || Terminal(d.State) {
		return d, false
	}
	next := d.State
	reason := ""
	switch eventType {
	case EventDownloadStarted, EventDownloadProgress:
		if d.State == DeviceTargeted || d.State == DeviceWaitingLock {
			next = DeviceDownloading
		}
	case EventDownloadFinished, EventInstallStarted, EventInstalled:
		if d.State == DeviceTargeted || d.State == DeviceWaitingLock || d.State == DeviceDownloading {
			next = DeviceInstalling
		}
	case EventFailed:
		next, reason = DeviceFailed, "the device reported the update failed"
		if detail != "" {
			reason += ": " + detail
		}
	case EventRolledBack:
		next, reason = DeviceFailed, "the device rolled the update back"
	}
	if next == d.State {
		return d, false
	}
	return to(d, next, reason), true
}

// Disconnected is what losing the device's connection does: a device
// settling on the release goes offline within its settle time, which
// counts as a failure (it may be boot-looping).
func Disconnected(d Device) (Device, bool) {
	if d.State != DeviceRunning {
		return d, false
	}
	return to(d, DeviceFailed, "went offline while settling on the release"), true
}

// Tick is what time alone does to a device: one that has run the release
// healthy for the settle time has succeeded; one past its deadline ends
// unreached (never heard from since it was targeted) or timed out (heard
// from, but stuck half way or still on its previous release).
func Tick(d Device, t Timing, now time.Time) (Device, bool) {
	switch {
	case d.State == DeviceRunning && !d.HealthySince.IsZero() && !now.Before(d.HealthySince.Add(t.Settle)):
		return to(d, DeviceSucceeded, ""), true
	case d.State == DeviceRunning:
		return d, false
	case Terminal(d.State) || d.State == DevicePending || d.Deadline.IsZero() || now.Before(d.Deadline):
		return d, false
	case d.State == DeviceTargeted && d.LastSeq < 0:
		return to(d, DeviceUnreached, "not heard from before its deadline"), true
	case d.State == DeviceTargeted:
		return to(d, DeviceTimedOut, "still on its previous release at its deadline"), true
	default:
		return to(d, DeviceTimedOut, "still "+d.State+" at its deadline"), true
	}
}

func to(d Device, state, reason string) Device {
	d.State, d.Reason = state, reason
	if state != DeviceRunning {
		d.HealthySince = time.Time{}
	}
	if Terminal(state) {
		d.Deadline = time.Time{}
	}
	return d
}
