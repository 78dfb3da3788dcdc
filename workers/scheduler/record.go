package scheduler

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/rollout"
	"github.com/flock-io/flock-api/internal/textclip"
)

// Actor is how the scheduler appears in events and the audit log.
const Actor = "scheduler"

// written is what a step recorded, for after its commit.
type written struct {
	event string
	audit *audit.Event
}

// record writes a rollout event to the outbox and, for a change the
// scheduler makes on its own (op, the audit operation, not empty), an
// audit record, both in the step's transaction.
func (s *Scheduler) record(ctx context.Context, q *db.Queries, st *step, event string, group int, reason, op string) error {
	id, err := uuid.NewV7()
	if err != nil {
		return fmt.Errorf("event id: %w", err)
	}
	ev := rollout.Event{ID: id, RolloutID: st.r.ID, OrgID: st.r.OrgID, FleetID: st.r.FleetID, Event: event,
		State: st.r.State, Group: &group, Reason: textclip.Clip(reason, 2000), Actor: Actor, At: st.now}
	rec := ev.Record()
	if err := q.RolloutEventAdd(ctx, db.RolloutEventAddParams{ID: id, RolloutID: st.r.ID, Record: json.RawMessage(rec.Value)}); err != nil {
		return fmt.Errorf("write event %s: %w", event, err)
	}
	w := written{event: event}
	if op != "" {
		a := audit.NewEvent()
		a.OrgID, a.ActorType, a.ActorLabel = st.r.OrgID, "system", Actor
		a.Operation, a.TargetID, a.RequestID = "rollout:"+op, st.r.ID.String(), "scheduler:"+id.String()
		a.Outcome, a.Status = audit.Success, 200
		if err := s.audit.Insert(ctx, q, a); err != nil {
			return err
		}
		w.audit = &a
	}
	st.written = append(st.written, w)
	return nil
}

// committed does what follows a step's commit: nudges, the audit copy,
// counters, and a wake-up so the events go out at once.
func (s *Scheduler) committed(st *step) {
	if len(st.nudge) > 0 && s.nudge != nil {
		s.nudge.DevicesChanged(st.nudge...)
	}
	if st.nudgeFleet && s.nudge != nil {
		s.nudge.FleetChanged(st.r.FleetID)
	}
	for _, w := range st.written {
		s.m.transitions.WithLabelValues(w.event).Inc()
		if w.audit != nil {
			s.audit.Committed(*w.audit)
		}
	}
}
