package ingester

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/livestate"
	"github.com/flock-io/flock-api/internal/telemetry"
	"github.com/flock-io/flock-api/workers/commands"
)

// touchEvery: a device's last_seen_at in PostgreSQL is refreshed at most
// this often; the KV store and the connectivity history are exact.
const touchEvery = 30 * time.Second

// output is a batch turned into what it writes where; todo lists the
// writes (write.go).
type output struct {
	states   []kv.Write
	samples  []telemetry.Sample
	logs     []telemetry.LogLine
	updates  []telemetry.UpdateEvent
	conns    []telemetry.Connectivity
	connKV   []kv.Write
	connPG   db.DevicesApplyConnectivityParams
	statePG  db.DevicesApplyStateParams
	touch    db.DevicesTouchParams
	records  []bus.Record
	results  []commands.Result
	unknowns int

	// todo is the writes all this causes (output.parts), made once.
	todo []*part

	lastState map[uuid.UUID]int // device → index in statePG
}

// addState keeps the newest state of each device in the batch for
// PostgreSQL, which applies it only above the seq it holds.
func (o *output) addState(it item) {
	p := &o.statePG
	if i, ok := o.lastState[it.device]; ok {
		if p.Seqs[i] < it.state.seq {
			p.Seqs[i], p.Reported[i], p.Ats[i] = it.state.seq, string(it.raw), it.at.UTC()
			p.RunningReleaseIds[i], p.OsVersions[i], p.AgentVersions[i] = it.state.release, it.state.osVersion, it.state.agentVersion
		}
		return
	}
	if o.lastState == nil {
		o.lastState = map[uuid.UUID]int{}
	}
	o.lastState[it.device] = len(p.Ids)
	p.Ids = append(p.Ids, it.device)
	p.Seqs = append(p.Seqs, it.state.seq)
	p.Reported = append(p.Reported, string(it.raw))
	p.RunningReleaseIds = append(p.RunningReleaseIds, it.state.release)
	p.OsVersions = append(p.OsVersions, it.state.osVersion)
	p.AgentVersions = append(p.AgentVersions, it.state.agentVersion)
	p.Ats = append(p.Ats, it.at.UTC())
}

// build resolves each device's org and fleet and turns the items into
// writes. Items of devices that no longer exist are dropped.
func (w *worker) build(ctx context.Context, items []item) (*output, error) {
	ids := make([]uuid.UUID, 0, len(items))
	for _, it := range items {
		ids = append(ids, it.device)
	}
	owners, err := w.in.owners.resolve(ctx, ids)
	if err != nil {
		return nil, err
	}
	now := time.Now().UTC()
	out := &output{}
	lastConn := map[uuid.UUID]int{} // device → index in connPG
	touched := map[uuid.UUID]bool{}
	for _, it := range items {
		o, ok := owners[it.device]
		if !ok {
			out.unknowns++
			w.in.metrics.dropped.WithLabelValues(dropUnknown).Inc()
			w.log.Warn("ingester dropped a message", "reason", dropUnknown, "device", it.device.String(), "kind", it.kind)
			continue
		}
		base := recordBase{DeviceID: it.device.String(), OrgID: o.org.String(), FleetID: o.fleet.String(), ReceivedAt: it.at.UTC().Format(time.RFC3339Nano)}
		key := []byte(base.DeviceID)
		switch it.kind {
		case devicetopic.State:
			v, err := json.Marshal(livestate.State{ReceivedAt: it.at.UTC(), State: it.raw})
			if err != nil {
				return nil, err
			}
			out.states = append(out.states, kv.Write{Key: livestate.StateKey(it.device), Seq: uint64(it.state.seq) + 1, Value: v, TTL: livestate.StateTTL})
			out.addState(it)
			out.records = append(out.records, bus.Record{Topic: bus.TopicDeviceState, Key: key, Value: base.with("state", it.raw)})
		case devicetopic.Telemetry:
			for _, s := range it.samples {
				ts, err := time.Parse(time.RFC3339Nano, s.Ts)
				if err != nil {
					ts = it.at
				}
				out.samples = append(out.samples, telemetry.Sample{DeviceID: it.device, OrgID: o.org, TS: ts, Name: s.Name, Value: s.Value, Unit: s.Unit, Labels: s.Labels})
			}
			out.records = append(out.records, bus.Record{Topic: bus.TopicDeviceTelemetry, Key: key, Value: base.merged(it.raw)})
		case devicetopic.Logs:
			for _, l := range it.logs {
				ts, err := time.Parse(time.RFC3339Nano, l.Ts)
				if err != nil {
					ts = it.at
				}
				stream := telemetry.StreamStdout
				if l.Stream != nil {
					stream = fmt.Sprint(l.Stream.Value())
				}
				out.logs = append(out.logs, telemetry.LogLine{DeviceID: it.device, OrgID: o.org, Service: l.Service, Seq: int64(l.Seq), TS: ts, Stream: stream, Line: l.Line})
			}
			out.records = append(out.records, bus.Record{Topic: bus.TopicDeviceLogs, Key: key, Value: base.merged(it.raw)})
		case devicetopic.Events:
			out.updates = append(out.updates, it.update.stored(it.device, o.org, it.at))
			out.records = append(out.records, bus.Record{Topic: bus.TopicDeviceEvents, Key: key, Value: base.with("event", it.raw)})
		case devicetopic.CommandResults:
			// Applied in order, so a device's received then succeeded in
			// one batch both count; their events are the Kafka records.
			out.results = append(out.results, commands.Result{Device: it.device, ID: it.result.id,
				Status: it.result.status, Error: it.result.err, At: it.at.UTC()})
		case devicetopic.Status:
			online := it.status.State != nil && *it.status.State == events.ConnectionStateOnline
			event := telemetry.EventDisconnected
			if online {
				event = telemetry.EventConnected
			}
			at := it.at.UTC()
			out.conns = append(out.conns, telemetry.Connectivity{DeviceID: it.device, OrgID: o.org, ConnectionSeq: it.statusSeq, Event: event, At: at})
			seq := livestate.ConnSeq(it.statusSeq, online)
			v, err := json.Marshal(livestate.Conn{Online: online, ConnectionSeq: it.statusSeq, At: at})
			if err != nil {
				return nil, err
			}
			out.connKV = append(out.connKV, kv.Write{Key: livestate.ConnKey(it.device), Seq: seq, Value: v, TTL: livestate.StateTTL})
			out.records = append(out.records, record(bus.TopicDeviceConnectivity, it.device, connectivityRecord{
				DeviceID: base.DeviceID, OrgID: base.OrgID, FleetID: base.FleetID, Event: event, ConnectionSeq: it.statusSeq, At: base.ReceivedAt}))
			if i, ok := lastConn[it.device]; ok {
				if out.connPG.Keys[i] < int64(seq) {
					out.connPG.Keys[i], out.connPG.Connected[i], out.connPG.Ats[i] = int64(seq), online, at
				}
			} else {
				lastConn[it.device] = len(out.connPG.Ids)
				out.connPG.Ids = append(out.connPG.Ids, it.device)
				out.connPG.Keys = append(out.connPG.Keys, int64(seq))
				out.connPG.Connected = append(out.connPG.Connected, online)
				out.connPG.Ats = append(out.connPG.Ats, at)
			}
		}
		if !touched[it.device] && w.in.owners.shouldTouch(it.device, now) {
			touched[it.device] = true
			out.touch.Ids = append(out.touch.Ids, it.device)
			out.touch.Ats = append(out.touch.Ats, now)
		}
	}
	out.todo = out.parts(w.in)
	return out, nil
}

// Kafka records. The payload a device sent is embedded as it came (it was
// validated), so the record carries exactly what the device said; and the
// records are spliced from its bytes rather than encoded, which took a
// fifth of the ingester's time per message.
type recordBase struct {
	DeviceID   string
	OrgID      string
	FleetID    string
	ReceivedAt string
}

// open starts a record's JSON object with the base fields. Every one is a
// UUID or an RFC 3339 time, which need no escaping.
func (b recordBase) open(size int) []byte {
	out := make([]byte, 0, 128+size)
	out = append(out, `{"device_id":"`...)
	out = append(out, b.DeviceID...)
	out = append(out, `","org_id":"`...)
	out = append(out, b.OrgID...)
	out = append(out, `","fleet_id":"`...)
	out = append(out, b.FleetID...)
	out = append(out, `","received_at":"`...)
	out = append(out, b.ReceivedAt...)
	return append(out, '"')
}

// with is the record holding raw, a JSON value, under key.
func (b recordBase) with(key string, raw []byte) []byte {
	out := b.open(len(key) + len(raw))
	out = append(out, `,"`...)
	out = append(out, key...)
	out = append(out, `":`...)
	out = append(out, raw...)
	return append(out, '}')
}

// merged is the record holding the members of raw, a JSON object whose
// schema allows none of the base's names (TelemetryBatch, LogBatch).
func (b recordBase) merged(raw []byte) []byte {
	members := bytes.TrimLeft(raw, " \t\r\n")
	members = bytes.TrimLeft(members[1:], " \t\r\n") // past the '{'
	out := b.open(len(members))
	if len(members) > 0 && members[0] != '}' {
		out = append(out, ',')
	}
	return append(out, members...)
}

type connectivityRecord struct {
	DeviceID      string `json:"device_id"`
	OrgID         string `json:"org_id"`
	FleetID       string `json:"fleet_id"`
	Event         string `json:"event"`
	ConnectionSeq int64  `json:"connection_seq"`
	At            string `json:"at"`
}

func record(topic string, device uuid.UUID, v any) bus.Record {
	b, err := json.Marshal(v)
	if err != nil {
		// Every field is a string, a number or JSON that was just parsed.
		panic(fmt.Sprintf("ingester: encode %s record: %v", topic, err))
	}
	return bus.Record{Topic: topic, Key: []byte(device.String()), Value: b}
}
