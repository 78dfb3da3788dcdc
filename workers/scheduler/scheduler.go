// Package scheduler drives rollouts: the scheduler target. It applies
// device reports (flock.device.state.v1, .events.v1, .connectivity.v1,
// read in a Kafka consumer group) to the rollout_devices rows of the
// rollouts they belong to, each batch in one transaction committed before
// its offsets, and on a timer steps every active rollout: time-bound
// device states, group verdicts, the next group, targeting within the
// rate limit and maintenance window, and the end. The rules are
// internal/rollout's; this package is their I/O.
//
// Any number of replicas may run. A device's reports are handled by the
// replica that owns its partition, and its rows are locked while they are;
// a rollout is stepped under its row lock (SKIP LOCKED, so replicas share
// rollouts rather than queue for them). Progress lives only in rows (counts
// are counted, never kept), and every change is idempotent (a report
// applies only above the last sequence applied, events and disconnects
// only move a device forward), so a replica killed at any moment loses
// nothing and counts nothing twice: what it had not committed is
// redelivered. Rollout events are written to the outbox (rollout_events)
// in the transaction of their transition and published from there.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/workers/nudger"
)

// Group is the scheduler's Kafka consumer group.
const Group = "flock-scheduler"

// Topics are what the scheduler consumes.
var Topics = []string{bus.TopicDeviceState, bus.TopicDeviceEvents, bus.TopicDeviceConnectivity}

const (
	// defaultInterval is the timer: every active rollout is stepped this
	// often, and sooner after a batch changed one.
	defaultInterval = 250 * time.Millisecond
	// minGap keeps a stream of batches from stepping rollouts without a
	// pause: each step counts a group, which costs PostgreSQL time the
	// batches need.
	minGap = 50 * time.Millisecond
	// defaultSessionTimeout: a replica killed without leaving the group
	// gives up its partitions this long after its last heartbeat.
	defaultSessionTimeout = 10 * time.Second
	// dueBatch bounds the devices one step moves by time alone.
	dueBatch = 5000
	// outboxBatch events are published together.
	outboxBatch = 500
)

// Config configures a Scheduler.
type Config struct {
	// Group is the consumer group; default Group.
	Group string
	// Interval is the timer; default 250ms.
	Interval time.Duration
	// SessionTimeout is the consumer group's (see bus.SessionTimeout);
	// default 10s.
	SessionTimeout time.Duration
	// Now is the clock; default time.Now. Tests call Step with their own.
	Now     func() time.Time
	Log     *slog.Logger
	Metrics prometheus.Registerer
}

// Deps are the scheduler's stores and peers.
type Deps struct {
	Pool  *pgxpool.Pool
	Bus   *bus.Bus
	Nudge nudger.Notifier
	Audit *audit.Recorder
}

// Scheduler is one replica.
type Scheduler struct {
	cfg   Config
	pool  *pgxpool.Pool
	bus   *bus.Bus
	nudge nudger.Notifier
	audit *audit.Recorder
	log   *slog.Logger
	m     *metrics

	// wake asks the timer loop for a step now; one pending is enough.
	wake chan struct{}
	// inGroup: the consumer joined a group session (readiness).
	inGroup atomic.Bool
}

// New returns a scheduler; Run runs it.
func New(cfg Config, deps Deps) (*Scheduler, error) {
	if deps.Pool == nil || deps.Bus == nil || deps.Audit == nil {
		return nil, errors.New("scheduler: a pool, a bus and an audit recorder are required")
	}
	if cfg.Group == "" {
		cfg.Group = Group
	}
	if cfg.Interval <= 0 {
		cfg.Interval = defaultInterval
	}
	if cfg.SessionTimeout <= 0 {
		cfg.SessionTimeout = defaultSessionTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	return &Scheduler{cfg: cfg, pool: deps.Pool, bus: deps.Bus, nudge: deps.Nudge, audit: deps.Audit,
		log: cfg.Log.With("component", "scheduler"), m: m, wake: make(chan struct{}, 1)}, nil
}

// Run consumes device reports and steps rollouts until ctx is cancelled;
// it returns nil then, or the error that stopped the consumer.
func (s *Scheduler) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.Consume(ctx) })
	g.Go(func() error { return s.Loop(ctx) })
	return g.Wait()
}

// Ready reports whether the consumer has joined its group: until then no
// report is applied.
func (s *Scheduler) Ready(context.Context) error {
	if !s.inGroup.Load() {
		return fmt.Errorf("scheduler: consumer group %s not joined", s.cfg.Group)
	}
	return nil
}

// Loop steps every active rollout on the timer, and soon after a batch
// changed one, until ctx is cancelled. A failed step is logged and the
// next one tries again: the database may be back by then.
func (s *Scheduler) Loop(ctx context.Context) error {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-s.wake:
		}
		more, err := s.Step(ctx, s.cfg.Now())
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.m.stepErrors.Inc()
			s.log.Warn("scheduler step failed; the next one tries again", "error", err.Error())
		}
		next := s.cfg.Interval
		if more {
			next = 0 // a full batch was targeted: more are waiting
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(minGap):
		}
		timer.Reset(next)
	}
}

// poke asks for a step soon.
func (s *Scheduler) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}
