package rollout

import (
	"encoding/json"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/bus"
)

// Event types of flock.rollout.events.v1 (asyncapi/flock.yaml).
const (
	EventCreated            = "created"
	EventStarted            = "started"
	EventPaused             = "paused"
	EventResumed            = "resumed"
	EventCanceled           = "canceled"
	EventAborted            = "aborted"
	EventRolledBackAll      = "rolled_back"
	EventFinished           = "finished"
	EventWaitingForApproval = "waiting_for_approval"
	EventGroupStarted       = "group_started"
	EventGroupSucceeded     = "group_succeeded"
	EventGroupCompleted     = "group_completed"
	EventThresholdTripped   = "threshold_tripped"
)

// Event is one record of flock.rollout.events.v1.
type Event struct {
	ID        uuid.UUID `json:"id"`
	RolloutID uuid.UUID `json:"rollout_id"`
	OrgID     uuid.UUID `json:"org_id"`
	FleetID   uuid.UUID `json:"fleet_id"`
	Event     string    `json:"event"`
	State     string    `json:"state"`
	Group     *int      `json:"group,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	Actor     string    `json:"actor,omitempty"`
	At        time.Time `json:"at"`
}

// Record is the event as a bus record, keyed by rollout so a rollout's
// events stay in order. A new id is given when the event has none.
func (e Event) Record() bus.Record {
	if e.ID == uuid.Nil {
		e.ID = uuid.Must(uuid.NewV7())
	}
	e.At = e.At.UTC()
	b, err := json.Marshal(e)
	if err != nil {
		panic("rollout: encode event: " + err.Error()) // only uuids, strings, an int and a time
	}
	return bus.Record{Topic: bus.TopicRolloutEvents, Key: []byte(e.RolloutID.String()), Value: b}
}

// ActionEvent is the event type an action's step records.
func ActionEvent(action string, step Step) string {
	switch {
	case action == ActionStart:
		return EventStarted
	case action == ActionPause:
		return EventPaused
	case action == ActionResume:
		return EventResumed
	case action == ActionCancel:
		return EventCanceled
	case action == ActionAbort && step.Rollback:
		return EventRolledBackAll
	case action == ActionAbort:
		return EventAborted
	default: // next-group, approve
		return EventGroupStarted
	}
}
