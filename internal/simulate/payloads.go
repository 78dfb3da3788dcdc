package simulate

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/devicetopic"
)

// mix is the periodic traffic of a device, cycled through from a random
// start: mostly telemetry, then logs, and its state now and then. Update
// events and status are sent when something happens, outside the mix.
var mix = [...]string{
	devicetopic.Telemetry, devicetopic.Logs, devicetopic.Telemetry, devicetopic.State, devicetopic.Telemetry,
	devicetopic.Logs, devicetopic.Telemetry, devicetopic.Logs, devicetopic.Telemetry, devicetopic.State,
}

// Payloads makes the messages of one device, each matching its schema in
// asyncapi/flock.yaml: reported state with an increasing seq, telemetry
// batches of a few samples drifting like real sensors, log batches with
// per-service sequence numbers, update events with stable ids, and status.
// It is not safe for concurrent use; each device owns one.
type Payloads struct {
	device   uuid.UUID
	rng      *rand.Rand
	next     int // index into mix
	now      func() time.Time
	agent    string
	ip       string
	running  uuid.UUID              // the release the state reports, uuid.Nil before any
	services []events.ServiceStatus // its services as the state reports them
	seq      int                    // last reported-state seq
	logSeq   map[string]int

	cpuTemp, cpuUsage, memUsed, rxBytes, txBytes float64
}

// NewPayloads returns the generator of device's messages; seed makes its
// choices repeatable.
func NewPayloads(device uuid.UUID, seed uint64) *Payloads {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return &Payloads{
		device:   device,
		rng:      rng,
		next:     rng.IntN(len(mix)),
		now:      time.Now,
		agent:    "flock-simulate " + AgentVersion,
		ip:       fmt.Sprintf("10.%d.%d.%d", rng.IntN(256), rng.IntN(256), 1+rng.IntN(254)),
		logSeq:   map[string]int{},
		cpuTemp:  45 + 10*rng.Float64(),
		cpuUsage: 5 + 20*rng.Float64(),
		memUsed:  (200 + 300*rng.Float64()) * (1 << 20),
	}
}

// SetRunning records the release the device now runs and its services, all
// running, which later states report and whose names later log lines carry.
func (p *Payloads) SetRunning(releaseID uuid.UUID, services []string) {
	svcs := make([]events.ServiceStatus, len(services))
	for i, name := range services {
		svcs[i] = events.ServiceStatus{Name: name, Status: ptr(events.ServiceStateRunning)}
	}
	p.SetServices(releaseID, svcs)
}

// SetServices records what later states report: the release (uuid.Nil for
// none) and its services, each in whatever step of an update it is. Log
// lines come from the services reported running.
func (p *Payloads) SetServices(releaseID uuid.UUID, services []events.ServiceStatus) {
	p.running = releaseID
	p.services = make([]events.ServiceStatus, len(services))
	for i, s := range services {
		// A copy of the status too, so the caller's slice stays its own.
		if s.Status != nil {
			s.Status = ptr(*s.Status)
		}
		p.services[i] = s
	}
}

// view is what the states report now.
func (p *Payloads) view() view {
	return view{release: p.running, services: slices.Clone(p.services)}
}

// Next returns the next message of the periodic mix.
func (p *Payloads) Next() (kind string, payload []byte) {
	kind = mix[p.next]
	p.next = (p.next + 1) % len(mix)
	switch kind {
	case devicetopic.Telemetry:
		return kind, p.Telemetry()
	case devicetopic.Logs:
		return kind, p.Logs()
	default:
		return kind, p.State()
	}
}

func (p *Payloads) ts() string { return p.now().UTC().Format(time.RFC3339Nano) }

// State is the device's reported state, with the next seq.
func (p *Payloads) State() []byte {
	p.seq++
	s := events.ReportedState{
		Seq:          p.seq,
		Services:     p.services,
		OsVersion:    "flockOS 1.4.2",
		AgentVersion: p.agent,
		IpAddresses:  []string{p.ip},
	}
	if p.running != uuid.Nil {
		s.RunningReleaseId = p.running.String()
	}
	return mustJSON(s)
}

// Telemetry is a batch of the device's metrics at one instant.
func (p *Payloads) Telemetry() []byte {
	walk := func(v *float64, step, lo, hi float64) float64 {
		*v = min(hi, max(lo, *v+step*(2*p.rng.Float64()-1)))
		return *v
	}
	ts := p.ts()
	b := events.TelemetryBatch{Samples: []events.TelemetrySample{
		{Ts: ts, Name: "cpu.temperature", Value: round(walk(&p.cpuTemp, 1.5, 35, 85), 1), Unit: "celsius"},
		{Ts: ts, Name: "cpu.usage", Value: round(walk(&p.cpuUsage, 8, 0, 100), 1), Unit: "percent"},
		{Ts: ts, Name: "memory.used", Value: float64(int64(walk(&p.memUsed, 8<<20, 100<<20, 900<<20))), Unit: "bytes"},
	}}
	if p.rng.IntN(2) == 0 {
		p.rxBytes += float64(p.rng.IntN(64 << 10))
		p.txBytes += float64(p.rng.IntN(16 << 10))
		eth := map[string]string{"interface": "eth0"}
		b.Samples = append(b.Samples,
			events.TelemetrySample{Ts: ts, Name: "net.rx_bytes", Value: p.rxBytes, Unit: "bytes", Labels: eth},
			events.TelemetrySample{Ts: ts, Name: "net.tx_bytes", Value: p.txBytes, Unit: "bytes", Labels: eth})
	}
	return mustJSON(b)
}

var logLines = []string{
	"GET /healthz 200 0.4ms",
	"reading sensor bus 1: ok",
	"published 12 readings",
	"cache hit ratio 0.93",
	"connected to upstream",
	"retrying upstream in 2s: connection refused",
	"configuration reloaded",
	"flushing 3 buffered records",
}

// Logs is a batch of one to four lines from the running services (from the
// agent itself while none runs), each service numbering its own.
func (p *Payloads) Logs() []byte {
	var svcs []string
	for _, s := range p.services {
		if s.Status != nil && *s.Status == events.ServiceStateRunning {
			svcs = append(svcs, s.Name)
		}
	}
	if len(svcs) == 0 {
		svcs = []string{"agent"}
	}
	n := 1 + p.rng.IntN(4)
	b := events.LogBatch{Entries: make([]events.LogEntry, 0, n)}
	ts := p.ts()
	for range n {
		svc := svcs[p.rng.IntN(len(svcs))]
		p.logSeq[svc]++
		stream, line := events.LogStreamStdout, logLines[p.rng.IntN(len(logLines))]
		if p.rng.IntN(10) == 0 {
			stream, line = events.LogStreamStderr, "warning: "+line
		}
		b.Entries = append(b.Entries, events.LogEntry{Service: svc, Seq: p.logSeq[svc], Ts: ts, Stream: ptr(stream), Line: line})
	}
	return mustJSON(b)
}

// UpdateStep is what one update event says: which release the device is
// installing, which of its attempts at it this is, what happened, to which
// service, how far along, and what went wrong.
type UpdateStep struct {
	Release  uuid.UUID
	Attempt  int
	Type     events.UpdateEventType
	Service  string
	Progress int
	Error    string
}

// UpdateEvent is one step of installing a release. Its id is derived from
// the device and the whole step, attempt included: a repeat of the same
// step is recognisably the same event, and installing a release again (back
// to it after a rollback) gives new events a consumer that dedupes by id
// does not drop.
func (p *Payloads) UpdateEvent(s UpdateStep) []byte {
	name, _ := s.Type.Value().(string)
	e := events.UpdateEvent{
		Id:           uuid.NewSHA1(p.device, fmt.Appendf(nil, "%s/%d/%s/%s/%d", s.Release, s.Attempt, name, s.Service, s.Progress)).String(),
		Ts:           p.ts(),
		ReservedType: ptr(s.Type),
		ReleaseId:    s.Release.String(),
		Service:      s.Service,
		Progress:     s.Progress,
		Error:        s.Error,
	}
	return mustJSON(e)
}

// Status is a connection status: online right after a connect, offline as
// the will and before a clean disconnect, both with the connection's seq.
func Status(online bool, connectionSeq int64) []byte {
	st := events.ConnectionStateOffline
	if online {
		st = events.ConnectionStateOnline
	}
	return mustJSON(events.ConnectionStatus{State: &st, ConnectionSeq: int(connectionSeq)})
}

func ptr[T any](v T) *T { return &v }

func round(v float64, digits int) float64 {
	m := 1.0
	for range digits {
		m *= 10
	}
	return float64(int64(v*m+0.5)) / m
}

// mustJSON encodes the payload structs above, which hold only strings,
// numbers, slices, string maps and enums: encoding cannot fail.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("simulate: encode %T: %v", v, err))
	}
	return b
}
