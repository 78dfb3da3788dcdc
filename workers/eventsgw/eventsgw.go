// Package eventsgw is the events-gateway: it turns the internal Kafka
// topics into each organisation's CloudEvents and delivers them to the
// organisation's endpoints (webhooks, its Kafka) through a durable outbox
// in PostgreSQL.
//
// At least once, nothing lost: a consumed batch is stored (org_events, one
// row per stable event id, so a redelivered record is stored once) and
// fanned out to deliveries in one transaction before its offsets are
// committed, so a kill -9 at any point loses nothing and duplicates
// nothing. Deliveries are claimed under a lease (FOR UPDATE SKIP LOCKED),
// so with any number of replicas each attempt is made by one; an attempt's
// outcome, the next retry and the endpoint's failure record are written in
// one transaction, so a retry survives a restart. Claims cap the
// deliveries in flight per endpoint and leave a device's (or rollout's)
// later events until its earlier one is done, so a slow or dead endpoint
// holds only its own slots and every endpoint gets events in order.
package eventsgw

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/eventdelivery"
	"github.com/flock-io/flock-api/internal/postgres"
)

// Group is the gateway's consumer group.
const Group = "flock-events-gateway"

// Config configures a gateway replica.
type Config struct {
	Pool      *pgxpool.Pool
	Bus       *bus.Bus
	Deliverer *eventdelivery.Deliverer
	// Schedule is the wait before each retry (default
	// eventdelivery.DefaultSchedule); DisableAfter how long an endpoint
	// may fail before it is disabled (default 72h); Retention how long
	// events are kept for the feed and replays (default 7 days).
	Schedule     []time.Duration
	DisableAfter time.Duration
	Retention    time.Duration
	// Workers bounds the attempts in flight (default 64); PerEndpoint
	// those of one endpoint (default 8).
	Workers, PerEndpoint int
	// AttemptTimeout bounds one attempt (default 15 s; the webhook sender
	// has its own, shorter, timeout); the lease outlives it.
	AttemptTimeout time.Duration
	Log            *slog.Logger
	Registerer     prometheus.Registerer
}

// Gateway is one replica.
type Gateway struct {
	cfg    Config
	log    *slog.Logger
	holder string
	kick   chan struct{}
	sem    chan struct{}

	attempts *prometheus.CounterVec
	stored   prometheus.Counter
	bad      prometheus.Counter
	latency  prometheus.Histogram
}

// New makes a replica; Run runs it.
func New(cfg Config) (*Gateway, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if len(cfg.Schedule) == 0 {
		cfg.Schedule = eventdelivery.DefaultSchedule
	}
	if cfg.DisableAfter <= 0 {
		cfg.DisableAfter = 72 * time.Hour
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 7 * 24 * time.Hour
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 64
	}
	if cfg.PerEndpoint <= 0 {
		cfg.PerEndpoint = 8
	}
	if cfg.AttemptTimeout <= 0 {
		cfg.AttemptTimeout = 15 * time.Second
	}
	host, _ := os.Hostname()
	g := &Gateway{cfg: cfg, log: cfg.Log.With("component", "events-gateway"), holder: fmt.Sprintf("%s-%d-%s", host, os.Getpid(), uuid.NewString()[:8]),
		kick: make(chan struct{}, 1), sem: make(chan struct{}, cfg.Workers)}
	g.attempts = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flock_events_attempts_total",
		Help: "Delivery attempts by kind and outcome (succeeded, retry, failed)."}, []string{"kind", "outcome"})
	g.stored = prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_events_stored_total", Help: "Customer events stored (duplicates not counted)."})
	g.bad = prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_events_bad_records_total", Help: "Internal records that could not be made into events (logged and skipped)."})
	g.latency = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flock_events_delivery_seconds",
		Help: "From an event's time to its successful delivery.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 16)})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{g.attempts, g.stored, g.bad, g.latency} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return g, nil
}

// Kick wakes the dispatcher (new deliveries were queued).
func (g *Gateway) Kick() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// Run consumes, dispatches and prunes until ctx ends; attempts in flight
// finish (or time out) before it returns.
func (g *Gateway) Run(ctx context.Context) error {
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error {
		err := g.cfg.Bus.Consume(ctx, Group, eventdelivery.Topics, g.ingest)
		if ctx.Err() != nil {
			return nil
		}
		return err
	})
	eg.Go(func() error { return g.dispatch(ctx) })
	eg.Go(func() error { g.prune(ctx); return nil })
	return eg.Wait()
}

// ingest stores a batch of records as events and queues their deliveries,
// in one transaction; an error makes the bus deliver the batch again.
func (g *Gateway) ingest(ctx context.Context, recs []bus.Record) error {
	var evs []*eventdelivery.Event
	for _, r := range recs {
		ev, err := eventdelivery.FromRecord(r)
		if err != nil {
			g.bad.Inc()
			g.log.Warn("events-gateway: record skipped", "topic", r.Topic, "key", string(r.Key), "error", err)
			continue
		}
		if ev != nil {
			evs = append(evs, ev)
		}
	}
	if len(evs) == 0 {
		return nil
	}
	n := 0
	err := postgres.InTx(ctx, g.cfg.Pool, func(q *db.Queries) error {
		n = 0
		for _, ev := range evs {
			_, stored, err := eventdelivery.Emit(ctx, q, ev)
			if err != nil {
				return err
			}
			if stored {
				n++
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store %d events: %w", len(evs), err)
	}
	g.stored.Add(float64(n))
	g.Kick()
	return nil
}

// idlePoll is how often the dispatcher looks for due retries when nothing
// kicked it (another replica's events, retries coming due).
const idlePoll = time.Second

func (g *Gateway) dispatch(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	// An attempt ends within AttemptTimeout (its context says so); the
	// margin covers writing its outcome. A replica killed mid-attempt
	// holds the delivery (and the device's later ones) this long.
	lease := g.cfg.AttemptTimeout + 5*time.Second
	for ctx.Err() == nil {
		free := g.cfg.Workers - len(g.sem)
		var claimed []db.EventDelivery
		if free > 0 {
			var err error
			claimed, err = db.New(g.cfg.Pool).DeliveriesClaim(ctx, db.DeliveriesClaimParams{PerEndpoint: int64(g.cfg.PerEndpoint),
				MaxRows: int32(free), ScanPerEndpoint: int32(4 * g.cfg.PerEndpoint), LeaseSeconds: lease.Seconds(), Holder: g.holder})
			if err != nil && ctx.Err() == nil {
				g.log.Warn("events-gateway: claiming deliveries failed", "error", err)
			}
		}
		if len(claimed) > 0 {
			if err := g.start(ctx, &wg, claimed); err != nil && ctx.Err() == nil {
				g.log.Warn("events-gateway: loading claimed deliveries failed; their leases lapse and they are retried", "error", err)
			}
			if len(claimed) == free {
				continue // maybe more due: claim again once a slot frees
			}
		}
		wait := idlePoll
		if due, err := db.New(g.cfg.Pool).DeliveriesNextDue(ctx); err == nil {
			wait = min(wait, max(time.Until(due), 5*time.Millisecond))
		}
		select {
		case <-ctx.Done():
		case <-g.kick:
		case <-time.After(wait):
		}
	}
	return nil
}

// done is signalled when an attempt ends, so a full dispatcher claims
// again at once.
func (g *Gateway) release() {
	<-g.sem
	g.Kick()
}

func (g *Gateway) start(ctx context.Context, wg *sync.WaitGroup, ds []db.EventDelivery) error {
	seqs := make([]int64, len(ds))
	ids := make([]uuid.UUID, 0, len(ds))
	for i, d := range ds {
		seqs[i] = d.EventSeq
		ids = append(ids, d.EndpointID)
	}
	q := db.New(g.cfg.Pool)
	evs, err := q.OrgEventsBySeq(ctx, seqs)
	if err != nil {
		return err
	}
	eps, err := q.EventEndpointsByID(ctx, ids)
	if err != nil {
		return err
	}
	bySeq := make(map[int64]db.OrgEvent, len(evs))
	for _, e := range evs {
		bySeq[e.Seq] = e
	}
	byID := make(map[uuid.UUID]db.EventEndpoint, len(eps))
	for _, e := range eps {
		byID[e.ID] = e
	}
	for _, d := range ds {
		ev, ok1 := bySeq[d.EventSeq]
		ep, ok2 := byID[d.EndpointID]
		if !ok1 || !ok2 {
			continue // deleted meanwhile (cascades take the delivery too)
		}
		g.sem <- struct{}{}
		wg.Go(func() {
			defer g.release()
			// The attempt finishes even when the process is stopping: its
			// outcome must be written, or it is made again.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.cfg.AttemptTimeout)
			defer cancel()
			g.attempt(actx, d, ep, ev)
		})
	}
	return nil
}

// attempt makes one attempt and writes its outcome.
func (g *Gateway) attempt(ctx context.Context, d db.EventDelivery, ep db.EventEndpoint, ev db.OrgEvent) {
	now := time.Now()
	res := g.cfg.Deliverer.Deliver(ctx, ep, ev, now)
	outcome := "succeeded"
	status, next := "succeeded", now
	if res.Err != nil {
		var ok bool
		next, ok = eventdelivery.NextAttempt(g.cfg.Schedule, int(d.Attempts)+1, now)
		switch {
		case res.Retry && ok:
			status, outcome = "pending", "retry"
		default:
			status, outcome, next = "failed", "failed", now
		}
	}
	g.attempts.WithLabelValues(ep.Kind, outcome).Inc()
	if res.Err == nil {
		g.succeeded(ctx, d, ev, res)
		return
	}
	var disabled *eventdelivery.Event
	err := postgres.InTx(ctx, g.cfg.Pool, func(q *db.Queries) error {
		disabled = nil
		if _, err := eventdelivery.RecordAttempt(ctx, q, d, res); err != nil {
			return err
		}
		lastStatus := res.StatusCode()
		lastErr := ""
		if res.Err != nil {
			lastErr = truncate(res.Err.Error(), 1000)
		}
		n, err := q.DeliveryDone(ctx, db.DeliveryDoneParams{ID: d.ID, Holder: g.holder, Status: status, NextAttemptAt: next,
			LastStatus: lastStatus, LastError: lastErr})
		if err != nil {
			return err
		}
		if n == 0 {
			return errLeaseLost
		}
		if res.Err == nil {
			return q.EndpointSucceeded(ctx, ep.ID)
		}
		// A delivery that gave up lets the next of its order key go.
		if status == "failed" {
			if err := q.DeliveryPromoteNext(ctx, db.DeliveryPromoteNextParams{EndpointID: d.EndpointID, OrderKey: d.OrderKey, EventSeq: d.EventSeq}); err != nil {
				return err
			}
		}
		f, err := q.EndpointFailing(ctx, ep.ID)
		if err != nil {
			return err
		}
		if f.Enabled && f.FailingSince != nil && now.Sub(*f.FailingSince) >= g.cfg.DisableAfter {
			reason := fmt.Sprintf("every delivery failed for %s (since %s); the last: %s", now.Sub(*f.FailingSince).Round(time.Second),
				f.FailingSince.UTC().Format(time.RFC3339), truncate(res.Err.Error(), 300))
			if _, err := q.EndpointDisable(ctx, db.EndpointDisableParams{ID: ep.ID, Reason: reason}); err != nil {
				return err
			}
			disabled = eventdelivery.EndpointDisabled(ep, reason, *f.FailingSince, now)
			if _, _, err := eventdelivery.Emit(ctx, q, disabled); err != nil {
				return err
			}
		}
		return nil
	})
	switch {
	case errors.Is(err, errLeaseLost):
		g.log.Warn("events-gateway: a delivery's lease lapsed during its attempt; another replica makes it again", "delivery", d.ID, "endpoint", ep.ID)
	case err != nil:
		g.log.Error("events-gateway: recording an attempt failed; the lease lapses and the delivery is attempted again", "delivery", d.ID, "error", err)
	default:
		if res.Err == nil {
			g.latency.Observe(time.Since(ev.Time).Seconds())
		}
		if disabled != nil {
			g.log.Warn("events-gateway: endpoint disabled after failing too long", "endpoint", ep.ID, "org_id", ep.OrgID, "reason", disabled.Data)
			g.Kick()
		}
	}
}

var errLeaseLost = errors.New("lease lost")

// succeeded records a successful attempt in one statement (the common
// case, so one round trip).
func (g *Gateway) succeeded(ctx context.Context, d db.EventDelivery, ev db.OrgEvent, res eventdelivery.Result) {
	code := res.StatusCode()
	id, _ := uuid.NewV7()
	q := db.New(g.cfg.Pool)
	n, err := q.DeliverySucceeded(ctx, db.DeliverySucceededParams{ID: d.ID, Holder: g.holder, AttemptID: id,
		StatusCode: code, DurationMs: int32(res.Duration.Milliseconds()), Response: eventdelivery.LogText(res.Response)})
	switch {
	case err != nil:
		g.log.Error("events-gateway: recording an attempt failed; the lease lapses and the delivery is attempted again", "delivery", d.ID, "error", err)
	case n == 0:
		g.log.Warn("events-gateway: a delivery's lease lapsed during its attempt; another replica makes it again", "delivery", d.ID)
	default:
		g.latency.Observe(time.Since(ev.Time).Seconds())
		if d.OrderKey != "" {
			// After the success committed: an insert that raced it is
			// visible now (EventFanOut).
			if err := q.DeliveryPromoteNext(ctx, db.DeliveryPromoteNextParams{EndpointID: d.EndpointID, OrderKey: d.OrderKey, EventSeq: d.EventSeq}); err != nil {
				g.log.Error("events-gateway: promoting the next delivery failed; it waits for the sweep", "delivery", d.ID, "error", err)
			}
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// pruneEvery is how often old events are deleted; sweepEvery how often
// blocked deliveries with nothing ahead any more are made due.
const (
	pruneEvery = time.Hour
	sweepEvery = 30 * time.Second
)

func (g *Gateway) prune(ctx context.Context) {
	t := time.NewTicker(pruneEvery)
	defer t.Stop()
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	for {
		for ctx.Err() == nil {
			n, err := db.New(g.cfg.Pool).OrgEventsPrune(ctx, time.Now().Add(-g.cfg.Retention))
			if err != nil {
				if ctx.Err() == nil {
					g.log.Warn("events-gateway: pruning old events failed", "error", err)
				}
				break
			}
			if n == 0 {
				break
			}
		}
	wait:
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-sweep.C:
			if n, err := db.New(g.cfg.Pool).DeliveriesUnblock(ctx); err != nil && ctx.Err() == nil {
				g.log.Warn("events-gateway: sweeping blocked deliveries failed", "error", err)
			} else if n > 0 {
				g.log.Warn("events-gateway: deliveries unblocked by the sweep", "count", n)
				g.Kick()
			}
			goto wait
		}
	}
}
