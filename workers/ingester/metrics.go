package ingester

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/internal/devicetopic"
)

type metrics struct {
	received      *prometheus.CounterVec
	receivedKind  map[string]prometheus.Counter // received's series, resolved once: counted per message
	dropped       *prometheus.CounterVec
	writeErrors   prometheus.Counter
	batchSeconds  prometheus.Histogram
	batchMessages prometheus.Histogram
	latency       prometheus.Histogram
	connected     prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flock_ingest_messages_total",
			Help: "Device messages the ingester accepted, by kind (state, telemetry, logs, events, status).",
		}, []string{"kind"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flock_ingest_dropped_total",
			Help: "Device messages the ingester dropped, by reason (topic, too_large, malformed_json, schema, unknown_device, bad_content).",
		}, []string{"reason"}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flock_ingest_write_errors_total",
			Help: "Batch writes that failed and were retried.",
		}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flock_ingest_batch_write_seconds",
			Help:    "Time to write one batch to every store and Kafka, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		batchMessages: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flock_ingest_batch_messages",
			Help:    "Messages per written batch.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "flock_ingest_latency_seconds",
			Help:    "From receiving a batch's first message to acknowledging the batch.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flock_ingest_mqtt_connections",
			Help: "MQTT connections of this ingester that are up.",
		}),
	}
	m.receivedKind = make(map[string]prometheus.Counter, len(devicetopic.FromDevice))
	for _, k := range devicetopic.FromDevice {
		m.receivedKind[k] = m.received.WithLabelValues(k)
	}
	for _, r := range dropReasons {
		m.dropped.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.received, m.dropped, m.writeErrors, m.batchSeconds, m.batchMessages, m.latency, m.connected} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("ingester: register metrics: %w", err)
		}
	}
	return m, nil
}
