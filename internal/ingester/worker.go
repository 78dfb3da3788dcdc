package ingester

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
	"github.com/sethvargo/go-retry"
	"golang.org/x/sync/errgroup"

	"github.com/flock-io/flock-api/gen/db"
	ev "github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/events"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/livestate"
	"github.com/flock-io/flock-api/internal/mqtt/broker"
	"github.com/flock-io/flock-api/internal/telemetry"
)

// Topic layout (asyncapi/flock.yaml).
const topicPrefix = "flock/v1/devices/"

// Kinds of device-to-cloud messages, as the topic's last level names them.
const (
	kindState     = "state"
	kindTelemetry = "telemetry"
	kindLogs      = "logs"
	kindEvents    = "events"
	kindStatus    = "status"
)

var deviceKinds = []string{kindState, kindTelemetry, kindLogs, kindEvents, kindStatus}

// Reasons a message is dropped, for flock_ingest_dropped_total. A fixed set,
// so devices cannot grow the label space.
const (
	dropTopic      = "topic"
	dropTooLarge   = "too_large"
	dropMalformed  = "malformed_json"
	dropSchema     = "schema"
	dropUnknown    = "unknown_device"
	dropBadContent = "bad_content"
)

var dropReasons = []string{dropTopic, dropTooLarge, dropMalformed, dropSchema, dropUnknown, dropBadContent}

// touchEvery: a device's last_seen_at in PostgreSQL is refreshed at most
// this often; the KV store and the connectivity history are exact.
const touchEvery = 30 * time.Second

// item is one accepted message, decoded, waiting for its batch.
type item struct {
	device uuid.UUID
	kind   string
	at     time.Time
	raw    []byte

	state     reportedState
	samples   []ev.TelemetrySample
	logs      []ev.LogEntry
	status    *ev.ConnectionStatus
	statusSeq int64
}

// worker batches the messages of one connection and writes them. One batch
// is written while the next fills: the connection's window (its Receive
// Maximum) keeps messages coming during a write, and batches are written
// and acknowledged in the order they were received, one at a time, so a
// device's records reach Kafka in the order this connection got them.
type worker struct {
	in  *Ingester
	log *slog.Logger

	cur     *batch      // filling
	writing *batch      // being written by a goroutine; nil when none is
	spare   *batch      // a written batch, kept for its buffers
	todo    chan *batch // to the writing goroutine
	done    chan error  // the writing goroutine's result
	timer   *time.Timer
	current *paho.Client // the connection the newest message came in on
	unacked int          // QoS 1 messages received and not yet acknowledged
}

// batch is a run of messages written together.
type batch struct {
	pending []received // to acknowledge once written, in order
	items   []item
	first   time.Time
	out     *output // the writes, once built; kept across retries
}

func (b *batch) reset() {
	clear(b.pending)
	b.pending = b.pending[:0]
	b.items = b.items[:0]
	b.out = nil
}

func (in *Ingester) newWorker(log *slog.Logger) *worker {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &worker{in: in, log: log, timer: t, cur: &batch{}, done: make(chan error, 1)}
}

// run takes messages until ctx ends, then writes what it holds.
func (w *worker) run(ctx context.Context, inbox <-chan received) error {
	// One writing goroutine for the connection's life: a goroutine per
	// batch grew a fresh stack through pgx and franz-go every time.
	w.todo = make(chan *batch)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for b := range w.todo {
			w.done <- w.write(ctx, b)
		}
	}()
	defer func() { close(w.todo); <-writerDone }()
	for {
		var tick <-chan time.Time
		if w.writing == nil && len(w.cur.pending) > 0 {
			tick = w.timer.C
		}
		select {
		case <-ctx.Done():
			return w.drain(inbox, nil)
		case m := <-inbox:
			w.add(m)
			if w.writing == nil && (len(w.cur.items) >= w.in.cfg.BatchSize || w.unacked >= int(w.in.cfg.ReceiveMaximum)) {
				w.dispatch(ctx)
			}
		case err := <-w.done:
			if err != nil {
				// ctx ended during the retries; drain writes it again.
				failed := w.writing
				w.writing = nil
				return w.drain(inbox, failed)
			}
			w.complete(w.writing)
			w.writing = nil
			// What arrived during the write goes now: it has waited as
			// long as the write took.
			if len(w.cur.pending) > 0 {
				w.dispatch(ctx)
			}
		case <-tick:
			w.dispatch(ctx)
		}
	}
}

// dispatch starts writing the filling batch.
func (w *worker) dispatch(ctx context.Context) {
	w.timer.Stop()
	b := w.cur
	w.cur, w.spare = w.spare, nil
	if w.cur == nil {
		w.cur = &batch{}
	}
	w.writing = b
	w.todo <- b
}

// complete acknowledges a written batch and keeps it for reuse.
func (w *worker) complete(b *batch) {
	for _, m := range b.pending {
		w.ack(m)
		if m.pub.QoS > 0 {
			w.unacked--
		}
	}
	w.in.metrics.latency.Observe(time.Since(b.first).Seconds())
	b.reset()
	w.spare = b
}

// drain writes and acknowledges everything already received, within
// DrainTimeout: the batch being written, or failed (the one whose retries
// ctx ended), then what is left. What it cannot write stays unacknowledged.
func (w *worker) drain(inbox <-chan received, failed *batch) error {
	if w.writing != nil {
		if err := <-w.done; err != nil {
			failed = w.writing
		} else {
			w.complete(w.writing)
		}
		w.writing = nil
	}
	for {
		select {
		case m := <-inbox:
			w.add(m)
			continue
		default:
		}
		break
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.in.cfg.DrainTimeout)
	defer cancel()
	for _, b := range []*batch{failed, w.cur} {
		if b == nil || len(b.pending) == 0 {
			continue
		}
		if err := w.write(ctx, b); err != nil {
			return fmt.Errorf("ingester: %d messages not written at shutdown (the broker redelivers them): %w", w.unacked, err)
		}
		w.complete(b)
	}
	return nil
}

// add decodes m into the filling batch, or drops it.
func (w *worker) add(m received) {
	w.current = m.client
	it, reason, err := w.decode(m)
	if err != nil {
		w.drop(m, it.device, reason, err)
		w.ack(m)
		return
	}
	b := w.cur
	if len(b.pending) == 0 {
		b.first = m.at
		if w.writing == nil {
			w.timer.Reset(w.in.cfg.FlushPeriod)
		}
	}
	b.pending = append(b.pending, m)
	if m.pub.QoS > 0 {
		w.unacked++
	}
	b.items = append(b.items, it)
	w.in.metrics.receivedKind[it.kind].Inc()
}

func (w *worker) drop(m received, device uuid.UUID, reason string, err error) {
	w.in.metrics.dropped.WithLabelValues(reason).Inc()
	attrs := []any{"reason", reason, "topic", broker.Truncate(m.pub.Topic), "error", err}
	if device != uuid.Nil {
		attrs = append(attrs, "device", device.String())
	}
	w.log.Warn("ingester dropped a message", attrs...)
}

// ack acknowledges m on the connection it came in on. After a reconnect
// paho's session belongs to the new connection and the broker redelivers
// what the old one left unacknowledged, so acknowledging there is skipped.
func (w *worker) ack(m received) {
	if m.pub.QoS == 0 || m.client != w.current {
		return
	}
	if err := m.client.Ack(m.pub); err != nil {
		w.log.Debug("ingester: ack", "error", err)
	}
}

// decode checks the topic, the size and the schema, and decodes.
func (w *worker) decode(m received) (item, string, error) {
	device, kind, ok := parseTopic(m.pub.Topic)
	if !ok {
		return item{}, dropTopic, errors.New("not a device topic")
	}
	it := item{device: device, kind: kind, at: m.at, raw: m.pub.Payload}
	if len(m.pub.Payload) > w.in.cfg.MaxPayload {
		return it, dropTooLarge, fmt.Errorf("payload of %d bytes is over %d", len(m.pub.Payload), w.in.cfg.MaxPayload)
	}
	doc, err := w.in.deps.Validator.Decode(kind, m.pub.Payload)
	if err != nil {
		var pe *events.PayloadError
		if errors.As(err, &pe) && pe.Malformed {
			return it, dropMalformed, err
		}
		return it, dropSchema, err
	}
	switch kind {
	case kindState:
		it.state, err = readReportedState(doc)
	case kindTelemetry:
		it.samples, err = telemetrySamples(doc)
	case kindLogs:
		it.logs, err = logEntries(doc)
	case kindEvents:
		// Passed on to Kafka as sent; the schema check is all it needs.
	case kindStatus:
		it.status, err = connectionStatus(doc)
		if err == nil {
			it.statusSeq = int64(it.status.ConnectionSeq)
		}
	}
	if err != nil {
		// The schema passed, so this is a value Go cannot hold (a sequence
		// beyond int64, say).
		return it, dropBadContent, err
	}
	return it, "", nil
}

// parseTopic splits flock/v1/devices/<uuid>/<kind>, for the kinds a device
// publishes.
func parseTopic(topic string) (uuid.UUID, string, bool) {
	device, kind, ok := broker.ParseDeviceTopic(topic)
	if !ok {
		return uuid.Nil, "", false
	}
	switch kind {
	case kindState, kindTelemetry, kindLogs, kindEvents, kindStatus:
		return device, kind, true
	}
	return uuid.Nil, "", false
}

// write writes b everywhere. A failed write is retried until it succeeds
// or ctx ends; the parts already written are not written again.
func (w *worker) write(ctx context.Context, b *batch) error {
	start := time.Now()
	attempt := 0
	err := retry.Do(ctx, writeBackoff(), func(ctx context.Context) error {
		attempt++
		var err error
		if b.out == nil {
			b.out, err = w.build(ctx, b.items)
		}
		if err == nil {
			err = b.out.write(ctx, w.in)
		}
		if err != nil {
			w.in.metrics.writeErrors.Inc()
			w.log.Error("ingester: write batch; retrying", "messages", len(b.pending), "attempt", attempt, "error", err)
			return retry.RetryableError(err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	w.in.metrics.batchSeconds.Observe(time.Since(start).Seconds())
	w.in.metrics.batchMessages.Observe(float64(len(b.pending)))
	return nil
}

// writeBackoff paces the retries of a write that failed: they go on until
// they succeed or ctx ends, since the messages stay unacknowledged meanwhile.
func writeBackoff() retry.Backoff {
	return retry.WithCappedDuration(retryMax, retry.NewExponential(retryMin))
}

// output is a batch turned into the writes it causes. Each part remembers
// whether it was written, so a retry does not write a part twice.
type output struct {
	states   []kv.Write
	samples  []telemetry.Sample
	logs     []telemetry.LogLine
	conns    []telemetry.Connectivity
	connKV   []kv.Write
	connPG   db.DevicesApplyConnectivityParams
	statePG  db.DevicesApplyStateParams
	touch    db.DevicesTouchParams
	records  []bus.Record
	done     [8]bool
	unknowns int

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
		case kindState:
			v, err := json.Marshal(livestate.State{ReceivedAt: it.at.UTC(), State: it.raw})
			if err != nil {
				return nil, err
			}
			out.states = append(out.states, kv.Write{Key: livestate.StateKey(it.device), Seq: uint64(it.state.seq) + 1, Value: v, TTL: livestate.StateTTL})
			out.addState(it)
			out.records = append(out.records, bus.Record{Topic: bus.TopicDeviceState, Key: key, Value: base.with("state", it.raw)})
		case kindTelemetry:
			for _, s := range it.samples {
				ts, err := time.Parse(time.RFC3339Nano, s.Ts)
				if err != nil {
					ts = it.at
				}
				out.samples = append(out.samples, telemetry.Sample{DeviceID: it.device, OrgID: o.org, TS: ts, Name: s.Name, Value: s.Value, Unit: s.Unit, Labels: s.Labels})
			}
			out.records = append(out.records, bus.Record{Topic: bus.TopicDeviceTelemetry, Key: key, Value: base.merged(it.raw)})
		case kindLogs:
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
		case kindEvents:
			out.records = append(out.records, bus.Record{Topic: bus.TopicDeviceEvents, Key: key, Value: base.with("event", it.raw)})
		case kindStatus:
			online := it.status.State != nil && *it.status.State == ev.ConnectionStateOnline
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
	return out, nil
}

// write performs every part not yet written, concurrently: they go to
// different systems and each is idempotent.
func (o *output) write(ctx context.Context, in *Ingester) error {
	parts := []func(context.Context) error{
		func(ctx context.Context) error { return writeKV(ctx, in, o.states) },
		func(ctx context.Context) error { return in.deps.Telemetry.WriteSamples(ctx, o.samples) },
		func(ctx context.Context) error { return in.deps.Telemetry.WriteLogs(ctx, o.logs) },
		func(ctx context.Context) error { return in.deps.Telemetry.WriteConnectivity(ctx, o.conns) },
		func(ctx context.Context) error {
			if err := writeKV(ctx, in, o.connKV); err != nil {
				return err
			}
			if len(o.connPG.Ids) == 0 {
				return nil
			}
			_, err := db.New(in.deps.Pool).DevicesApplyConnectivity(ctx, o.connPG)
			return err
		},
		func(ctx context.Context) error {
			if len(o.records) == 0 {
				return nil
			}
			return in.deps.Bus.Publish(ctx, o.records...)
		},
		func(ctx context.Context) error {
			if len(o.touch.Ids) == 0 {
				return nil
			}
			return db.New(in.deps.Pool).DevicesTouch(ctx, o.touch)
		},
		func(ctx context.Context) error { return db.New(in.deps.Pool).DevicesApplyState(ctx, o.statePG) },
	}
	names := [...]string{"live state", "samples", "log lines", "connectivity", "connection status", "kafka", "last seen", "reported state"}
	empty := [...]bool{len(o.states) == 0, len(o.samples) == 0, len(o.logs) == 0, len(o.conns) == 0,
		len(o.connKV) == 0 && len(o.connPG.Ids) == 0, len(o.records) == 0, len(o.touch.Ids) == 0, len(o.statePG.Ids) == 0}
	g, gctx := errgroup.WithContext(ctx)
	for i, part := range parts {
		if o.done[i] || empty[i] {
			continue
		}
		g.Go(func() error {
			if err := part(gctx); err != nil {
				return fmt.Errorf("write %s: %w", names[i], err)
			}
			o.done[i] = true
			return nil
		})
	}
	return g.Wait()
}

// writeKV writes a batch's live state in one round trip.
func writeKV(ctx context.Context, in *Ingester, ws []kv.Write) error {
	if len(ws) == 0 {
		return nil
	}
	_, err := in.deps.KV.SetManyIfNewer(ctx, ws)
	return err
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
