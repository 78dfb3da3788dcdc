// Package audit records who changed what. Every event is written to
// PostgreSQL in the same transaction as the change it describes, so the log
// can neither miss a committed change nor show one that rolled back; the API
// reads it from there. When FLOCK_LOKI_URL is set, committed events are also
// pushed to Loki for operators' log tooling.
package audit

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/eventdelivery"
)

// Event is one audit record.
type Event struct {
	ID         uuid.UUID `json:"id"`
	OrgID      uuid.UUID `json:"org_id"`
	Time       time.Time `json:"time"`
	ActorType  string    `json:"actor_type"`
	ActorID    uuid.UUID `json:"actor_id"`
	ActorLabel string    `json:"actor_label"`
	Operation  string    `json:"operation"`
	TargetID   string    `json:"target_id,omitempty"`
	RequestID  string    `json:"request_id"`
	Outcome    string    `json:"outcome"`
	Status     int       `json:"status"`
}

// Outcomes.
const (
	Success = "success"
	Failure = "failure"
)

// Publisher receives committed events; it must not block.
type Publisher interface {
	Publish(Event)
}

// Recorder writes events to PostgreSQL and hands committed ones to the
// publisher, if any.
type Recorder struct {
	pub Publisher
}

// NewRecorder returns a recorder; pub may be nil.
func NewRecorder(pub Publisher) *Recorder { return &Recorder{pub: pub} }

// NewEvent fills in the id and time.
func NewEvent() Event {
	id, err := uuid.NewV7()
	if err != nil {
		id = uuid.New()
	}
	return Event{ID: id, Time: time.Now().UTC()}
}

// Insert writes ev through q, which is usually the transaction of the change.
func (r *Recorder) Insert(ctx context.Context, q *db.Queries, ev Event) error {
	var target *string
	if ev.TargetID != "" {
		target = &ev.TargetID
	}
	err := q.AuditEventInsert(ctx, db.AuditEventInsertParams{
		ID: ev.ID, OrgID: ev.OrgID, OccurredAt: ev.Time, ActorType: ev.ActorType, ActorID: ev.ActorID,
		ActorLabel: ev.ActorLabel, Operation: ev.Operation, TargetID: target, RequestID: ev.RequestID,
		Outcome: ev.Outcome, Status: int32(ev.Status),
	})
	if err != nil {
		return fmt.Errorf("record audit event %s: %w", ev.Operation, err)
	}
	// The organisation's io.flock.audit.recorded event, in the change's
	// transaction too: its endpoints hear of exactly the committed changes.
	// A deleted organisation has no endpoints left to tell (and its
	// events went with it).
	if ev.OrgID != uuid.Nil && ev.Operation != "org:delete" {
		if _, _, err := eventdelivery.Emit(ctx, q, eventdelivery.Audited(ev.ID, ev.OrgID, ev.Time, events.AuditRecordedData{
			Id: ev.ID.String(), Operation: ev.Operation, ActorType: ev.ActorType, ActorLabel: ev.ActorLabel, TargetId: ev.TargetID,
			Outcome: ev.Outcome, Status: ev.Status, RequestId: ev.RequestID, Time: ev.Time.UTC().Format(time.RFC3339Nano)})); err != nil {
			return fmt.Errorf("record audit event %s: %w", ev.Operation, err)
		}
	}
	return nil
}

// Committed passes an event whose transaction committed to the publisher.
func (r *Recorder) Committed(ev Event) {
	if r.pub != nil {
		r.pub.Publish(ev)
	}
}
