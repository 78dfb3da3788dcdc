package rollout

import "time"

// A group's states (rollout_groups.state).
const (
	GroupPending   = "pending"   // not started
	GroupRunning   = "running"   // targeting its devices
	GroupSucceeded = "succeeded" // met its success threshold
	GroupFailed    = "failed"    // tripped its error threshold
	GroupComplete  = "complete"  // ended without succeeding (stuck, or skipped by next-group)
)

// DisconnectedAt is Disconnected for a disconnect that happened at at. A
// disconnect from before the device started settling (healthy since) is
// about an earlier connection: a late or redelivered record, which changes
// nothing. A zero at is taken as now.
func DisconnectedAt(d Device, at time.Time) (Device, bool) {
	if d.State == DeviceRunning && !at.IsZero() && at.Before(d.HealthySince) {
		return d, false
	}
	return Disconnected(d)
}

// Progress is what a step of the scheduler knows of a rollout and its
// current group.
type Progress struct {
	State      string // the rollout's
	GroupState string // the current group's
	// ThresholdAcknowledged: a person resumed the rollout after the group
	// tripped its error threshold, which does not trip again.
	ThresholdAcknowledged bool
	Group                 GroupSpec // the current group's settings
	Verdict               Verdict   // Judge of the current group's counts
	Last                  bool      // the current group is the last one
	ReadyAt               time.Time // when the next group may start; zero until the group succeeded
}

// Then is what a rollout does after its current group.
type Then string

// What comes after a group.
const (
	ThenWait      Then = ""                      // nothing yet
	ThenFinish    Then = Finished                // the last group is done: the rollout finishes
	ThenApproval  Then = WaitingForApproval      // the next group waits for a person
	ThenNextGroup Then = Then(EventGroupStarted) // the next group starts
)

// Decision is what one step does to a rollout.
type Decision struct {
	// Trip: the error threshold tripped; the group failed and the rollout
	// pauses or aborts (Verdict.Action).
	Trip bool
	// Stuck: the group completed below its success threshold; the rollout
	// pauses so a person decides.
	Stuck bool
	// Succeeded: the group met its success threshold just now.
	Succeeded bool
	// ReadyAt, when not zero, is to be recorded: the next group may start
	// then (after the soak time).
	ReadyAt time.Time
	Then    Then
}

// Decide is a step's decision for a rollout's current group at now.
//
// A group trips its error threshold once: after a person resumed the
// rollout (ThresholdAcknowledged, or the group failed already) it is not
// judged by it again, and once every device of a group that failed or got
// stuck is terminal the rollout goes on as if it had succeeded (resuming
// said so). A paused rollout only
// lets its devices finish; one waiting for approval may still trip.
func Decide(p Progress, now time.Time) Decision {
	var d Decision
	if p.State != Running && p.State != WaitingForApproval {
		return d
	}
	judged := (p.GroupState == GroupRunning || p.GroupState == GroupSucceeded) && !p.ThresholdAcknowledged
	if p.Verdict.Tripped && judged {
		return Decision{Trip: true}
	}
	if p.State != Running {
		return d
	}
	overridden := (p.GroupState == GroupFailed || p.GroupState == GroupComplete || p.ThresholdAcknowledged) && p.Verdict.Complete
	if p.GroupState != GroupSucceeded && !p.Verdict.Succeeded && !overridden {
		d.Stuck = p.Verdict.Stuck && p.GroupState == GroupRunning
		return d
	}
	d.Succeeded = p.GroupState == GroupRunning && p.Verdict.Succeeded
	ready := p.ReadyAt
	if ready.IsZero() {
		ready = NextGroupAt(p.Group, now)
		d.ReadyAt = ready
	}
	switch {
	case now.Before(ready):
	case p.Last && p.Verdict.Complete:
		d.Then = ThenFinish
	case p.Last:
		// Its last devices are still updating: the rollout ends when they
		// are done.
	case p.Group.RequiresApproval:
		d.Then = ThenApproval
	default:
		d.Then = ThenNextGroup
	}
	return d
}
