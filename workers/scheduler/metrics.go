package scheduler

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	records      *prometheus.CounterVec
	undecodable  prometheus.Counter
	changed      prometheus.Counter
	joined       prometheus.Counter
	batchSeconds prometheus.Histogram
	batchRetries prometheus.Counter
	stepSeconds  prometheus.Histogram
	stepErrors   prometheus.Counter
	targeted     prometheus.Counter
	transitions  *prometheus.CounterVec
	published    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flock_scheduler_records_total",
			Help: "Device records the scheduler handled, by topic."}, []string{"topic"}),
		undecodable: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_scheduler_undecodable_total",
			Help: "Device records the scheduler dropped because they did not decode."}),
		changed: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_scheduler_device_changes_total",
			Help: "Rollout device rows a batch of reports changed."}),
		joined: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_scheduler_late_joiners_total",
			Help: "Devices that joined a continuous rollout after it started."}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flock_scheduler_batch_seconds",
			Help: "Time to apply one polled batch of reports, retries included.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		batchRetries: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_scheduler_batch_retries_total",
			Help: "Batches of reports tried again after an error (a deadlock with an action, the database away)."}),
		stepSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flock_scheduler_step_seconds",
			Help: "Time of one step over every active rollout.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		stepErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_scheduler_step_errors_total",
			Help: "Steps that failed (the next step tries again)."}),
		targeted: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_scheduler_targeted_total",
			Help: "Devices a rollout newly targeted."}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flock_scheduler_transitions_total",
			Help: "Rollout transitions the scheduler made, by event."}, []string{"event"}),
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_scheduler_events_published_total",
			Help: "Rollout events published from the outbox to flock.rollout.events.v1."}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.records, m.undecodable, m.changed, m.joined, m.batchSeconds, m.batchRetries,
		m.stepSeconds, m.stepErrors, m.targeted, m.transitions, m.published} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("scheduler: register metrics: %w", err)
		}
	}
	return m, nil
}
