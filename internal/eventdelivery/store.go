package eventdelivery

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/textclip"
)

// Emit stores ev in the organisation's log and queues a delivery for every
// endpoint that takes it, in q's transaction. It reports false for an
// event stored before (the same id): nothing more is queued.
func Emit(ctx context.Context, q *db.Queries, ev *Event) (seq int64, stored bool, err error) {
	seq, err = q.OrgEventInsert(ctx, db.OrgEventInsertParams{ID: ev.ID, OrgID: ev.OrgID, FleetID: ev.FleetID, OrderKey: ev.OrderKey,
		Type: ev.Type, Source: ev.Source, Subject: ev.Subject, Time: ev.Time, Data: ev.Data})
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("store event %s: %w", ev.ID, err)
	}
	if _, err := q.EventFanOut(ctx, db.EventFanOutParams{Seq: seq, OrderKey: ev.OrderKey, OrgID: ev.OrgID, Type: ev.Type, FleetID: ev.FleetID}); err != nil {
		return 0, false, fmt.Errorf("queue deliveries of event %s: %w", ev.ID, err)
	}
	return seq, true, nil
}

// RecordAttempt writes an attempt to the delivery log.
func RecordAttempt(ctx context.Context, q *db.Queries, d db.EventDelivery, res Result) (uuid.UUID, error) {
	id, _ := uuid.NewV7()
	err := q.AttemptInsert(ctx, db.AttemptInsertParams{ID: id, DeliveryID: d.ID, EndpointID: d.EndpointID, StatusCode: res.StatusCode(),
		DurationMs: int32(res.Duration.Milliseconds()), Response: LogText(res.Response), Error: res.ErrorText(), Succeeded: res.Err == nil})
	if err != nil {
		return id, fmt.Errorf("record attempt of delivery %s: %w", d.ID, err)
	}
	return id, nil
}

// LogText is the first KB of a response as the delivery log keeps it:
// text, so a body cut mid-rune (or binary, or with NULs PostgreSQL text
// refuses) is made valid.
func LogText(b []byte) string { return textclip.Clip(string(b), 1024) }

// ErrorText is an attempt's error as the log and the delivery keep it
// ("" for a success): its first 1000 bytes, as valid text.
func (r Result) ErrorText() string {
	if r.Err == nil {
		return ""
	}
	return textclip.Clip(r.Err.Error(), 1000)
}
