package ingester

import (
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/telemetry"
)

// updateEvent is what the ingester keeps of an UpdateEvent for the
// telemetry store; the Kafka record carries the payload as sent.
type updateEvent struct {
	id       uuid.UUID
	ts       string
	typ      string
	release  uuid.NullUUID
	service  string
	progress *int
	err      string
}

func readUpdateEvent(doc any) (updateEvent, error) {
	m, err := object(doc)
	if err != nil {
		return updateEvent{}, err
	}
	e := updateEvent{ts: text(m, "ts"), typ: text(m, "type"), service: text(m, "service"), err: text(m, "error")}
	if e.id, err = uuid.Parse(text(m, "id")); err != nil {
		return updateEvent{}, fmt.Errorf("id: %w", err)
	}
	if r := text(m, "release_id"); r != "" {
		id, err := uuid.Parse(r)
		if err != nil {
			return updateEvent{}, fmt.Errorf("release_id: %w", err)
		}
		e.release = uuid.NullUUID{UUID: id, Valid: true}
	}
	if _, ok := m["progress"]; ok {
		p, err := integer(m, "progress")
		if err != nil {
			return updateEvent{}, err
		}
		if p < 0 || p > 100 {
			return updateEvent{}, fmt.Errorf("progress %d is not a percentage", p)
		}
		v := int(p)
		e.progress = &v
	}
	return e, nil
}

// stored is the event as the telemetry store keeps it. A time the schema
// allows but Go cannot parse (a leap second) falls back to the arrival, as
// for samples and log lines.
func (e updateEvent) stored(device, org uuid.UUID, at time.Time) telemetry.UpdateEvent {
	ts, err := time.Parse(time.RFC3339Nano, e.ts)
	if err != nil {
		ts = at
	}
	return telemetry.UpdateEvent{DeviceID: device, OrgID: org, ID: e.id, TS: ts, ReceivedAt: at.UTC(),
		Type: e.typ, ReleaseID: e.release, Service: e.service, Progress: e.progress, Error: e.err}
}
