// Package rollout holds the rules of a rollout, with no I/O: the rollout's
// states and the actions that move it (in the manner of hawkBit), each
// device's states and what a report, an update event or the clock does to
// them, when a group succeeds, trips its error threshold or is done, the
// rate limit with its ramp (AWS IoT Jobs' exponentialRate), maintenance
// windows, and which group a device belongs to. workers/scheduler applies
// them to PostgreSQL; handlers/rollouts validates and acts with them. Every
// function that depends on time takes the time, so tests drive a fake
// clock.
package rollout

import (
	"errors"
	"fmt"
)

// A rollout's states.
const (
	Ready              = "ready"
	Running            = "running"
	Paused             = "paused"
	WaitingForApproval = "waiting_for_approval"
	Finished           = "finished"
	Aborted            = "aborted"
	RolledBack         = "rolled_back"
	Canceled           = "canceled"
)

// States lists them, in the order a rollout usually meets them.
var States = []string{Ready, Running, Paused, WaitingForApproval, Finished, Aborted, RolledBack, Canceled}

// Active reports whether a rollout in state still holds its fleet (one
// rollout at a time per fleet) and may target devices.
func Active(state string) bool {
	switch state {
	case Running, Paused, WaitingForApproval:
		return true
	}
	return false
}

// Ended reports whether state is final.
func Ended(state string) bool {
	switch state {
	case Finished, Aborted, RolledBack, Canceled:
		return true
	}
	return false
}

// Actions a user takes.
const (
	ActionStart     = "start"
	ActionPause     = "pause"
	ActionResume    = "resume"
	ActionNextGroup = "next-group"
	ActionApprove   = "approve"
	ActionAbort     = "abort"
	ActionCancel    = "cancel"
)

// Actions lists them.
var Actions = []string{ActionStart, ActionPause, ActionResume, ActionNextGroup, ActionApprove, ActionAbort, ActionCancel}

// ErrInvalidAction is an action that makes no sense in the rollout's state;
// the API answers 409 naming the state.
var ErrInvalidAction = errors.New("action not allowed in this state")

// Step is what an action does: the state it leads to, and whether the
// rollout moves on to its next group.
type Step struct {
	State     string
	NextGroup bool
	// Rollback: an abort puts every touched device back on its previous
	// release.
	Rollback bool
}

// Act is the state machine of user actions. rollback says whether an
// abort rolls the touched devices back (the rollout's own setting, or the
// abort request's).
//
//	ready:                start → running, cancel → canceled
//	running:              pause → paused, next-group → running (next group now), abort
//	paused:               resume → running, next-group → paused (next group, still paused), abort
//	waiting_for_approval: approve or next-group → running (next group), pause → paused, abort
//	abort:                → aborted, or rolled_back with rollback
//
// Pause stops new targeting and lets devices already updating finish;
// resume targets again; none of them touches another rollout.
func Act(state, action string, rollback bool) (Step, error) {
	abort := Step{State: Aborted}
	if rollback {
		abort = Step{State: RolledBack, Rollback: true}
	}
	switch state {
	case Ready:
		switch action {
		case ActionStart:
			return Step{State: Running}, nil
		case ActionCancel:
			return Step{State: Canceled}, nil
		}
	case Running:
		switch action {
		case ActionPause:
			return Step{State: Paused}, nil
		case ActionNextGroup:
			return Step{State: Running, NextGroup: true}, nil
		case ActionAbort:
			return abort, nil
		}
	case Paused:
		switch action {
		case ActionResume:
			return Step{State: Running}, nil
		case ActionNextGroup:
			return Step{State: Paused, NextGroup: true}, nil
		case ActionAbort:
			return abort, nil
		}
	case WaitingForApproval:
		switch action {
		case ActionApprove, ActionNextGroup:
			return Step{State: Running, NextGroup: true}, nil
		case ActionPause:
			return Step{State: Paused}, nil
		case ActionAbort:
			return abort, nil
		}
	}
	return Step{}, fmt.Errorf("%w: %s a rollout that is %s", ErrInvalidAction, action, state)
}
