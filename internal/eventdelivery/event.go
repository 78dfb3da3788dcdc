package eventdelivery

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/bus"
)

// Topics are the internal topics events are made from.
var Topics = []string{bus.TopicDeviceConnectivity, bus.TopicDeviceState, bus.TopicDeviceEvents, bus.TopicRolloutEvents}

// idSpace namespaces the ids derived from internal records.
var idSpace = uuid.MustParse("6a1c2f4e-5b0d-4f7e-9d2a-0c8b3e9f1a77")

// Event is one customer event, before it is stored.
type Event struct {
	ID       uuid.UUID
	OrgID    uuid.UUID
	FleetID  uuid.NullUUID
	OrderKey string
	Type     string
	Source   string
	Subject  string
	Time     time.Time
	Data     json.RawMessage
}

// FromRecord turns an internal record into the organisation's event, or
// nothing for a record customers do not see. The id is derived from the
// record's topic, key and bytes, so a redelivered record (Kafka delivers at
// least once) yields the same id and is stored once.
func FromRecord(r bus.Record) (*Event, error) {
	ev := &Event{ID: uuid.NewSHA1(idSpace, []byte(r.Topic+"\x00"+string(r.Key)+"\x00"+string(r.Value)))}
	var org, fleet, subject, at string
	var data any
	switch r.Topic {
	case bus.TopicDeviceConnectivity:
		var rec events.ConnectivityRecord
		if err := json.Unmarshal(r.Value, &rec); err != nil {
			return nil, fmt.Errorf("decode %s record: %w", r.Topic, err)
		}
		if rec.Event == nil {
			return nil, nil
		}
		switch *rec.Event {
		case events.ConnectivityEventConnected:
			ev.Type = "io.flock.device.online"
		case events.ConnectivityEventDisconnected:
			ev.Type = "io.flock.device.offline"
		default:
			return nil, nil
		}
		org, fleet, subject, at = rec.OrgId, rec.FleetId, rec.DeviceId, rec.At
		data = events.DeviceConnectivityData{DeviceId: rec.DeviceId, FleetId: rec.FleetId, ConnectionSeq: rec.ConnectionSeq, At: rec.At}
	case bus.TopicDeviceState:
		var rec events.DeviceStateRecord
		if err := json.Unmarshal(r.Value, &rec); err != nil {
			return nil, fmt.Errorf("decode %s record: %w", r.Topic, err)
		}
		ev.Type = "io.flock.device.state.changed"
		org, fleet, subject, at = rec.OrgId, rec.FleetId, rec.DeviceId, rec.ReceivedAt
		data = events.DeviceStateChangedData{DeviceId: rec.DeviceId, FleetId: rec.FleetId, ReceivedAt: rec.ReceivedAt, State: rec.State}
	case bus.TopicDeviceEvents:
		var rec events.DeviceEventRecord
		if err := json.Unmarshal(r.Value, &rec); err != nil {
			return nil, fmt.Errorf("decode %s record: %w", r.Topic, err)
		}
		ev.Type = "io.flock.device.update.progressed"
		org, fleet, subject, at = rec.OrgId, rec.FleetId, rec.DeviceId, rec.ReceivedAt
		data = events.DeviceUpdateData{DeviceId: rec.DeviceId, FleetId: rec.FleetId, ReceivedAt: rec.ReceivedAt, Event: rec.Event}
	case bus.TopicRolloutEvents:
		var rec events.RolloutEventRecord
		if err := json.Unmarshal(r.Value, &rec); err != nil {
			return nil, fmt.Errorf("decode %s record: %w", r.Topic, err)
		}
		if rec.Event == nil {
			return nil, nil
		}
		ev.Type = "io.flock.rollout." + strings.ReplaceAll(fmt.Sprint(rec.Event.Value()), "_", ".")
		org, fleet, subject, at = rec.OrgId, rec.FleetId, rec.RolloutId, rec.At
		// The rollout's own event id is stable already.
		if id, err := uuid.Parse(rec.Id); err == nil {
			ev.ID = uuid.NewSHA1(idSpace, id[:])
		}
		data = rec
	default:
		return nil, nil
	}
	if !Known(ev.Type) {
		return nil, fmt.Errorf("record of %s makes type %s, which the catalogue lacks", r.Topic, ev.Type)
	}
	var err error
	if ev.OrgID, err = uuid.Parse(org); err != nil {
		return nil, fmt.Errorf("record of %s: org_id %q: %w", r.Topic, org, err)
	}
	if f, err := uuid.Parse(fleet); err == nil {
		ev.FleetID = uuid.NullUUID{UUID: f, Valid: true}
	}
	if ev.Time, err = time.Parse(time.RFC3339Nano, at); err != nil {
		ev.Time = time.Now().UTC()
	}
	ev.Subject, ev.OrderKey = subject, subject
	ev.Source = SourceOf(ev.OrgID, ev.FleetID)
	if ev.Data, err = json.Marshal(data); err != nil {
		return nil, err
	}
	return ev, nil
}

// SourceOf is an event's CloudEvents source.
func SourceOf(org uuid.UUID, fleet uuid.NullUUID) string {
	s := "/orgs/" + org.String()
	if fleet.Valid {
		s += "/fleets/" + fleet.UUID.String()
	}
	return s
}

// CloudEvent is the structured-mode JSON document of a stored event:
// what webhooks and the WebSocket feed carry. sequence is the feed's
// cursor (the CloudEvents sequence extension); 0 leaves it out.
func CloudEvent(e db.OrgEvent, sequence bool) ([]byte, error) {
	doc := map[string]any{
		"specversion":     "1.0",
		"id":              e.ID.String(),
		"source":          e.Source,
		"type":            e.Type,
		"time":            e.Time.UTC().Format(time.RFC3339Nano),
		"datacontenttype": "application/json",
		"data":            json.RawMessage(e.Data),
	}
	if e.Subject != "" {
		doc["subject"] = e.Subject
	}
	if sequence {
		doc["sequence"] = strconv.FormatInt(e.Seq, 10)
	}
	return json.Marshal(doc)
}

// EndpointDisabled is the event telling an organisation Flock disabled one
// of its endpoints; its id is stable for one disabling.
func EndpointDisabled(ep db.EventEndpoint, reason string, failingSince, now time.Time) *Event {
	data, _ := json.Marshal(events.EventEndpointDisabledData{EndpointId: ep.ID.String(), Name: ep.Name, Reason: reason,
		FailingSince: failingSince.UTC().Format(time.RFC3339Nano)})
	return &Event{ID: uuid.NewSHA1(idSpace, []byte("disabled\x00"+ep.ID.String()+"\x00"+failingSince.UTC().Format(time.RFC3339Nano))),
		OrgID: ep.OrgID, Type: "io.flock.event-endpoint.disabled", Source: SourceOf(ep.OrgID, uuid.NullUUID{}),
		Subject: ep.ID.String(), Time: now.UTC(), Data: data}
}

// TestEvent is the event of event-endpoint:test.
func TestEvent(ep db.EventEndpoint, now time.Time) *Event {
	data, _ := json.Marshal(events.EventEndpointTestData{EndpointId: ep.ID.String(), Message: "a test event from Flock"})
	id, _ := uuid.NewV7()
	return &Event{ID: id, OrgID: ep.OrgID, Type: "io.flock.event-endpoint.test", Source: SourceOf(ep.OrgID, uuid.NullUUID{}),
		Subject: ep.ID.String(), Time: now.UTC(), Data: data}
}

// Audited is the io.flock.audit.recorded event of an audit record; its id
// is the record's, so it is stored once.
func Audited(id, org uuid.UUID, at time.Time, d events.AuditRecordedData) *Event {
	data, _ := json.Marshal(d)
	return &Event{ID: uuid.NewSHA1(idSpace, id[:]), OrgID: org, Type: "io.flock.audit.recorded", Source: SourceOf(org, uuid.NullUUID{}),
		Subject: d.TargetId, Time: at.UTC(), Data: data}
}

// BuildFinished is the io.flock.build.finished event of a build.
func BuildFinished(build, org, fleet, release uuid.UUID, status, errDetail string, now time.Time) *Event {
	data, _ := json.Marshal(events.BuildFinishedData{BuildId: build.String(), FleetId: fleet.String(), ReleaseId: release.String(),
		Status: status, Error: errDetail})
	f := uuid.NullUUID{UUID: fleet, Valid: true}
	return &Event{ID: uuid.NewSHA1(idSpace, []byte("build-finished\x00"+build.String())), OrgID: org, FleetID: f,
		Type: "io.flock.build.finished", Source: SourceOf(org, f), Subject: build.String(), Time: now.UTC(), Data: data}
}

// ReleaseChanged is the io.flock.release.<change> event of a release
// (created, finalized or failed), built is the build that made it, if one
// did. Each change happens once to a release, so its id is derived from
// the release and the change and a second emission is stored once.
func ReleaseChanged(change string, r db.Release, built uuid.NullUUID, now time.Time) *Event {
	d := events.ReleaseChangedData{ReleaseId: r.ID.String(), FleetId: r.FleetID.String(), Version: r.Version, Status: r.Status}
	if built.Valid {
		d.BuildId = built.UUID.String()
	}
	data, _ := json.Marshal(d)
	f := uuid.NullUUID{UUID: r.FleetID, Valid: true}
	return &Event{ID: uuid.NewSHA1(idSpace, []byte("release-"+change+"\x00"+r.ID.String())), OrgID: r.OrgID, FleetID: f,
		OrderKey: r.ID.String(), Type: "io.flock.release." + change, Source: SourceOf(r.OrgID, f), Subject: r.ID.String(),
		Time: now.UTC(), Data: data}
}

// EmitRelease records a release's changes (created, finalized, failed;
// "" is skipped) as the organisation's events, in the change's own
// transaction q, so they exist exactly when it does.
func EmitRelease(ctx context.Context, q *db.Queries, r db.Release, built uuid.NullUUID, changes ...string) error {
	for _, c := range changes {
		if c == "" {
			continue
		}
		if _, _, err := Emit(ctx, q, ReleaseChanged(c, r, built, time.Now())); err != nil {
			return fmt.Errorf("record the %s event of release %s: %w", c, r.ID, err)
		}
	}
	return nil
}

// ReleaseStatusChange is the event type suffix of a release becoming
// status ("" for a status no event announces).
func ReleaseStatusChange(status string) string {
	switch status {
	case "final":
		return "finalized"
	case "failed":
		return "failed"
	}
	return ""
}
