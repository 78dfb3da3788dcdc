package streams

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/bus"
)

// EventType is a StreamEvent's type.
type EventType uint8

// The event types, as the OpenAPI document's StreamEventType names them.
const (
	TypeState EventType = iota + 1
	TypeConnectivity
	TypeUpdate
	TypeCommand
	TypeLog
	TypeRollout
	TypeGap
	TypeError
)

var typeNames = [...]string{
	TypeState:        "device.state",
	TypeConnectivity: "device.connectivity",
	TypeUpdate:       "device.update",
	TypeCommand:      "device.command",
	TypeLog:          "device.log",
	TypeRollout:      "rollout",
	TypeGap:          "gap",
	TypeError:        "error",
}

func (t EventType) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return "unknown"
}

// ParseType reads a StreamEventType.
func ParseType(s string) (EventType, bool) {
	for t, n := range typeNames {
		if n == s && n != "" {
			return EventType(t), true
		}
	}
	return 0, false
}

// Types is a set of event types.
type Types uint16

// TypesOf is the set of ts.
func TypesOf(ts ...EventType) Types {
	var s Types
	for _, t := range ts {
		s |= 1 << t
	}
	return s
}

// Has reports whether t is in s.
func (s Types) Has(t EventType) bool { return s&(1<<t) != 0 }

// topicType is the event type of each hub topic's records.
var topicType = [numTopics]EventType{
	tState:         TypeState,
	tConnectivity:  TypeConnectivity,
	tDeviceEvents:  TypeUpdate,
	tCommandEvents: TypeCommand,
	tRollout:       TypeRollout,
	tLogs:          TypeLog,
}

// Event is one event as it goes on the wire, rendered once and shared by
// every client that gets it.
type Event struct {
	Type EventType
	ID   string
	// frame is the whole Server-Sent Events frame; data is the StreamEvent
	// JSON inside it (a WebSocket message).
	frame []byte
	data  []byte
	// Log is set on device.log events, for the seam between a log
	// stream's history and its live lines.
	Log *LogMeta
}

// LogMeta identifies a log line.
type LogMeta struct {
	Service string
	Seq     int64
	TS      time.Time
}

// SSE is the Server-Sent Events frame of e.
func (e *Event) SSE() []byte { return e.frame }

// JSON is the StreamEvent document of e.
func (e *Event) JSON() []byte { return e.data }

// record is a Kafka record with the fields filters look at.
type record struct {
	topic     int
	partition int32
	offset    int64
	org       uuid.UUID
	fleet     uuid.UUID
	device    uuid.UUID
	rollout   uuid.UUID
	release   uuid.UUID // device.update: the release the update is about
	at        string
	value     []byte
	lines     []logLine
}

type logLine struct {
	Service string `json:"service"`
	Seq     int64  `json:"seq"`
	TS      string `json:"ts"`
	Stream  string `json:"stream"`
	Line    string `json:"line"`
}

// head is what every record carries at its top level.
type head struct {
	DeviceID   string `json:"device_id"`
	OrgID      string `json:"org_id"`
	FleetID    string `json:"fleet_id"`
	RolloutID  string `json:"rollout_id"`
	ReceivedAt string `json:"received_at"`
	At         string `json:"at"`
}

// decode reads a record of hub topic t. Records that cannot be read (no
// organisation) are not for any stream.
func decode(t int, tr *bus.TailRecord) (*record, error) {
	r := &record{topic: t, partition: tr.Partition, offset: tr.Offset, value: tr.Value}
	var h head
	var err error
	switch t {
	case tDeviceEvents:
		var v struct {
			head
			Event struct {
				ReleaseID string `json:"release_id"`
			} `json:"event"`
		}
		err = json.Unmarshal(tr.Value, &v)
		h = v.head
		if v.Event.ReleaseID != "" {
			r.release, _ = uuid.Parse(v.Event.ReleaseID)
		}
	case tLogs:
		var v struct {
			head
			Entries []logLine `json:"entries"`
		}
		err = json.Unmarshal(tr.Value, &v)
		h, r.lines = v.head, v.Entries
		for i := range r.lines {
			if r.lines[i].Stream == "" {
				r.lines[i].Stream = "stdout"
			}
		}
	default:
		err = json.Unmarshal(tr.Value, &h)
	}
	if err != nil {
		return nil, fmt.Errorf("%s partition %d offset %d: %w", hubTopics[t], tr.Partition, tr.Offset, err)
	}
	if r.org, err = uuid.Parse(h.OrgID); err != nil {
		return nil, fmt.Errorf("%s partition %d offset %d: org_id %q: %w", hubTopics[t], tr.Partition, tr.Offset, h.OrgID, err)
	}
	r.fleet, _ = uuid.Parse(h.FleetID)
	r.device, _ = uuid.Parse(h.DeviceID)
	r.rollout, _ = uuid.Parse(h.RolloutID)
	r.at = h.ReceivedAt
	if r.at == "" {
		r.at = h.At
	}
	if r.at == "" {
		r.at = tr.Timestamp.UTC().Format(time.RFC3339Nano)
	}
	return r, nil
}

// events renders r for a stream of kind k at pos, the position after r
// (pos[r.topic][r.partition] == r.offset+1): one event, or one per line
// of a log record, each line's id saying how many of its record's lines
// came before it. skip leaves out the first lines (a resumed stream
// already had them).
func (r *record) events(k Kind, pos *[numTopics][]int64, skip int) []*Event {
	typ := topicType[r.topic]
	if r.lines == nil {
		p := Position{Kind: k, Offs: *pos}
		return []*Event{render(typ, p.Encode(), r.at, r, r.value, nil)}
	}
	out := make([]*Event, 0, len(r.lines)-min(skip, len(r.lines)))
	for i := skip; i < len(r.lines); i++ {
		l := &r.lines[i]
		p := Position{Kind: k, Offs: *pos}
		if i < len(r.lines)-1 {
			// Encode reads the offsets only, so a copy of this one
			// partition's row is enough.
			row := append([]int64(nil), pos[r.topic]...)
			row[r.partition] = r.offset
			p.Offs[r.topic] = row
			p.Within = &Within{Topic: r.topic, Partition: r.partition, Skip: i + 1}
		}
		data, _ := json.Marshal(l)
		ts, _ := time.Parse(time.RFC3339Nano, l.TS)
		out = append(out, render(typ, p.Encode(), r.at, r, data, &LogMeta{Service: l.Service, Seq: l.Seq, TS: ts}))
	}
	return out
}

// render builds the StreamEvent document and its SSE frame. ids are
// base64url and types are fixed words, so neither needs escaping.
func render(typ EventType, id, at string, r *record, data []byte, lm *LogMeta) *Event {
	var b strings.Builder
	b.Grow(len(data) + len(id)*2 + 256)
	b.WriteString("id: ")
	b.WriteString(id)
	b.WriteString("\nevent: ")
	b.WriteString(typ.String())
	b.WriteString("\ndata: ")
	start := b.Len()
	b.WriteString(`{"id":"`)
	b.WriteString(id)
	b.WriteString(`","type":"`)
	b.WriteString(typ.String())
	b.WriteString(`","at":`)
	b.WriteString(strconv.Quote(at))
	if r != nil {
		writeID(&b, "org_id", r.org)
		writeID(&b, "fleet_id", r.fleet)
		writeID(&b, "device_id", r.device)
		writeID(&b, "rollout_id", r.rollout)
	}
	b.WriteString(`,"data":`)
	b.Write(data)
	b.WriteString("}")
	end := b.Len()
	b.WriteString("\n\n")
	frame := []byte(b.String())
	return &Event{Type: typ, ID: id, frame: frame, data: frame[start:end], Log: lm}
}

func writeID(b *strings.Builder, name string, id uuid.UUID) {
	if id == uuid.Nil {
		return
	}
	b.WriteString(`,"`)
	b.WriteString(name)
	b.WriteString(`":"`)
	b.WriteString(id.String())
	b.WriteString(`"`)
}

// Control builds a gap or error event: data {code, detail}. An error
// event has no id, so a client's Last-Event-ID stays the last real event.
func Control(typ EventType, id, code, detail string) *Event {
	data, _ := json.Marshal(struct {
		Code   string `json:"code"`
		Detail string `json:"detail"`
	}{code, detail})
	at := time.Now().UTC().Format(time.RFC3339Nano)
	if id != "" {
		return render(typ, id, at, nil, data, nil)
	}
	doc := fmt.Sprintf(`{"id":"","type":%q,"at":%q,"data":%s}`, typ.String(), at, data)
	frame := []byte("event: " + typ.String() + "\ndata: " + doc + "\n\n")
	return &Event{Type: typ, frame: frame, data: frame[len(frame)-2-len(doc) : len(frame)-2]}
}

// HistoryLine renders a stored log line of a log stream's history; its id
// resumes the history after it.
func HistoryLine(org, fleet, device uuid.UUID, l LogLineIn) *Event {
	id := (&Position{Kind: KindLogs, History: &LogCursor{TS: l.TS, Service: l.Service, Seq: l.Seq}}).Encode()
	ts := l.TS.UTC().Format(time.RFC3339Nano)
	data, _ := json.Marshal(logLine{Service: l.Service, Seq: l.Seq, TS: ts, Stream: l.Stream, Line: l.Line})
	r := &record{org: org, fleet: fleet, device: device}
	return render(TypeLog, id, ts, r, data, &LogMeta{Service: l.Service, Seq: l.Seq, TS: l.TS})
}

// LogLineIn is a stored log line.
type LogLineIn struct {
	Service string
	Seq     int64
	TS      time.Time
	Stream  string
	Line    string
}
