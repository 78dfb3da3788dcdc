package ingester

import (
	"log/slog"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/internal/events"
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
	v, err := events.NewValidator()
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
		msgs[i] = received{pub: &paho.Publish{Topic: simulate.Topic(id, kind), QoS: 1, Payload: payload}}
		bytes += len(payload)
	}
	return w, msgs, int64(bytes / len(msgs))
}
