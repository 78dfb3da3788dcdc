package ingester

import (
	"encoding/json"
	"log/slog"
	"reflect"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/simulate"
)

// BenchmarkDecode measures the per-message check and decode (topic, size,
// schema, typed values) on the simulator's mix of state, telemetry and logs;
// BenchmarkBuild adds turning batches of them into their writes (the
// stores' rows and the Kafka records).
func BenchmarkDecode(b *testing.B) {
	w, msgs, size := benchMessages(b)
	b.SetBytes(size)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, reason, err := w.decode(msgs[i%len(msgs)]); err != nil {
			b.Fatalf("%s: %v", reason, err)
		}
	}
}

func BenchmarkBuild(b *testing.B) {
	w, msgs, size := benchMessages(b)
	b.SetBytes(size)
	b.ReportAllocs()
	items := make([]item, 0, len(msgs))
	for i := 0; b.Loop(); i++ {
		it, reason, err := w.decode(msgs[i%len(msgs)])
		if err != nil {
			b.Fatalf("%s: %v", reason, err)
		}
		items = append(items, it)
		if len(items) == cap(items) {
			if _, err := w.build(b.Context(), items); err != nil {
				b.Fatal(err)
			}
			items = items[:0]
		}
	}
}

func benchMessages(b *testing.B) (*worker, []received, int64) {
	v, err := asyncapi.NewValidator()
	if err != nil {
		b.Fatal(err)
	}
	id := uuid.New()
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	in := &Ingester{cfg: Config{MaxPayload: defaultMaxPayload}, deps: Deps{Validator: v}, metrics: m, owners: newOwners(nil)}
	in.owners.cache.Add(id, owner{org: uuid.New(), fleet: uuid.New(), found: true})
	w := in.newWorker(slog.New(slog.DiscardHandler))
	p := simulate.NewPayloads(id, 1)
	msgs := make([]received, 300)
	bytes := 0
	for i := range msgs {
		kind, payload := p.Next()
		msgs[i] = received{pub: &paho.Publish{Topic: devicetopic.Topic(id, kind), QoS: 1, Payload: payload}}
		bytes += len(payload)
	}
	return w, msgs, int64(bytes / len(msgs))
}

// The values the ingester reads from the schema check's document
// (values.go) are those a plain decode into the generated types gives, for
// every kind of message the simulator sends and for edge cases of each.
func TestValuesMatchTypedDecode(t *testing.T) {
	v, err := asyncapi.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	p := simulate.NewPayloads(uuid.New(), 7)
	var payloads [][2]string
	for range 200 {
		kind, payload := p.Next()
		payloads = append(payloads, [2]string{kind, string(payload)})
	}
	payloads = append(payloads,
		[2]string{"telemetry", `{"samples":[{"ts":"2026-11-27T08:00:00.123456Z","name":"a","value":-1.5e3,"unit":"C","labels":{"k":"v","x":""}}]}`},
		[2]string{"telemetry", `{"samples":[{"ts":"2026-11-27T08:00:00Z","name":"b","value":7}]}`},
		[2]string{"telemetry", `{"samples":[{"ts":"2026-11-27T08:00:00Z","name":"c","value":0,"labels":{}}]}`},
		[2]string{"logs", `{"entries":[{"service":"api","seq":9007199254740993,"ts":"2026-11-27T08:00:00Z","stream":"stderr","line":"é \"quoted\""}]}`},
		[2]string{"status", `{"state":"offline","connection_seq":42}`},
		[2]string{"status", `{"state":"online","connection_seq":0}`},
		[2]string{"state", `{"seq":9007199254740993,"os_version":"x"}`},
		[2]string{"state", `{"seq":3,"running_release_id":"0b7e6a52-8f0c-4a5e-9d43-3c1b2f7a9e10","os_version":"balenaOS 6","agent_version":"1.2.3"}`},
	)
	for _, kp := range payloads {
		kind, payload := kp[0], []byte(kp[1])
		doc, err := v.Decode(kind, payload)
		if err != nil {
			t.Fatalf("%s %s: %v", kind, payload, err)
		}
		var got, want any
		switch kind {
		case "state":
			var s events.ReportedState
			err = json.Unmarshal(payload, &s)
			r := reportedState{seq: int64(s.Seq), release: s.RunningReleaseId, osVersion: s.OsVersion, agentVersion: s.AgentVersion}
			want = r
			got, _ = readReportedState(doc)
		case "telemetry":
			var b events.TelemetryBatch
			err = json.Unmarshal(payload, &b)
			want = b.Samples
			got, _ = telemetrySamples(doc)
		case "logs":
			var b events.LogBatch
			err = json.Unmarshal(payload, &b)
			want = b.Entries
			got, _ = logEntries(doc)
		case "status":
			var s events.ConnectionStatus
			err = json.Unmarshal(payload, &s)
			want = &s
			got, _ = connectionStatus(doc)
		default:
			continue
		}
		if err != nil {
			t.Fatalf("%s %s: typed decode: %v", kind, payload, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s %s:\n got %#v\nwant %#v", kind, payload, got, want)
		}
	}
}
