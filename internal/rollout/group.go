package rollout

import (
	"time"
)

// Counts are a group's devices by state.
type Counts map[string]int

// Total is the group's size.
func (c Counts) Total() int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// Done is how many of the group's devices are terminal.
func (c Counts) Done() int {
	n := 0
	for s, v := range c {
		if Terminal(s) {
			n += v
		}
	}
	return n
}

// Verdict is what a group's counts say.
type Verdict struct {
	// Complete: every device of the group is terminal.
	Complete bool
	// Succeeded: the share of succeeded devices reached the success
	// threshold (the next group may start, after the soak time).
	Succeeded bool
	// Tripped: the error threshold was crossed with its minimum sample;
	// Action is pause or abort.
	Tripped bool
	Action  string
	// Stuck: complete, below the success threshold, not tripped: the
	// rollout pauses so a person decides.
	Stuck bool
}

// Judge reads a group's counts against its thresholds. Shares count the
// group's devices as they are now: a device deleted or moved away mid-
// rollout leaves the counts, so it neither holds the group open nor skews
// its thresholds. An empty group is complete and succeeded.
func Judge(g GroupSpec, c Counts) Verdict {
	total := c.Total()
	var v Verdict
	if total == 0 {
		return Verdict{Complete: true, Succeeded: true}
	}
	v.Complete = c.Done() == total
	v.Succeeded = float64(c[DeviceSucceeded])*100 >= g.SuccessThreshold*float64(total)
	if t := g.ErrorThreshold; t != nil {
		types := t.FailureTypes
		if len(types) == 0 {
			types = []string{FailureFailed, FailureTimedOut, FailureUnreached}
		}
		failed := 0
		for _, ft := range types {
			failed += c[ft]
		}
		executed := c.Done() - c[DeviceRolledBack]
		if executed >= t.MinSample && executed > 0 && float64(failed)*100 > t.Percent*float64(executed) {
			v.Tripped, v.Action = true, t.Action
		}
	}
	v.Stuck = v.Complete && !v.Succeeded && !v.Tripped
	return v
}

// NextGroupAt is when the group after one that succeeded at met may start:
// after the group's soak time.
func NextGroupAt(g GroupSpec, met time.Time) time.Time {
	return met.Add(time.Duration(g.SoakSeconds) * time.Second)
}
