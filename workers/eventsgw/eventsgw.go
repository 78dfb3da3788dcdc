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
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sethvargo/go-retry"
	"golang.org/x/sync/errgroup"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/eventdelivery"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/textclip"
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
	// Workers bounds the attempts in flight (default 64) that are still
	// within SlowAfter (default 100ms) of their start; an attempt still
	// waiting for its receiver after that gives its worker to the next
	// delivery and waits among up to 16×Workers slow ones, so receivers
	// that hang hold sockets, not the workers healthy endpoints need.
	// PerEndpoint bounds the attempts in flight to one endpoint (default
	// 8; 1 while it is failing).
	Workers, PerEndpoint int
	SlowAfter            time.Duration
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
	sem    chan struct{} // workers: attempts within SlowAfter of their start
	slow   chan struct{} // attempts past SlowAfter, still waiting
	// succeeded carries successful attempts to the one writer, which
	// records what queued up while its last write ran in one statement.
	succeeded chan success

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
	if cfg.SlowAfter <= 0 {
		cfg.SlowAfter = 100 * time.Millisecond
	}
	host, _ := os.Hostname()
	g := &Gateway{cfg: cfg, log: cfg.Log.With("component", "events-gateway"), holder: fmt.Sprintf("%s-%d-%s", host, os.Getpid(), uuid.NewString()[:8]),
		kick: make(chan struct{}, 1), sem: make(chan struct{}, cfg.Workers), slow: make(chan struct{}, 16*cfg.Workers),
		succeeded: make(chan success, cfg.Workers)}
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
	eg.Go(func() error {
		// The writer outlives the dispatcher: attempts that finish while
		// the replica stops still have their outcome written.
		defer close(g.succeeded)
		return g.dispatch(ctx)
	})
	eg.Go(func() error { g.writeSucceeded(context.WithoutCancel(ctx)); return nil })
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
	// A batch's transaction can meet another's locks (a completion
	// promoting the delivery a fan-out locks) and be chosen as a
	// deadlock's victim, or meet a restarting database: it is tried again
	// before the error stops the consumer (and the batch is redelivered).
	n := 0
	backoff := retry.WithMaxRetries(ingestRetries, retry.WithCappedDuration(ingestRetryMax, retry.NewExponential(ingestRetryBase)))
	err := retry.Do(ctx, backoff, func(ctx context.Context) error {
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
		if err != nil && ctx.Err() == nil {
			g.log.Warn("events-gateway: storing a batch of events failed; trying again", "events", len(evs), "error", err)
			return retry.RetryableError(err)
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("store %d events: %w", len(evs), err)
	}
	g.stored.Add(float64(n))
	g.Kick()
	return nil
}

// A batch of events is stored with these retries.
const (
	ingestRetries   = 8
	ingestRetryBase = 50 * time.Millisecond
	ingestRetryMax  = 5 * time.Second
)

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
	// A claim is a query over every endpoint with due deliveries: while
	// attempts run (each frees its worker and wakes this loop), wait until
	// enough workers are free to make the query worth it.
	minClaim := max(1, g.cfg.Workers/4)
	for ctx.Err() == nil {
		busy := len(g.sem)
		free := g.cfg.Workers - busy
		if free < minClaim && busy > 0 {
			select {
			case <-ctx.Done():
			case <-g.kick:
			}
			continue
		}
		claimed, err := db.New(g.cfg.Pool).DeliveriesClaim(ctx, db.DeliveriesClaimParams{PerEndpoint: int64(g.cfg.PerEndpoint),
			MaxRows: int32(free), ScanPerEndpoint: int32(g.cfg.PerEndpoint), LeaseSeconds: lease.Seconds(), Holder: g.holder})
		if err != nil && ctx.Err() == nil {
			g.log.Warn("events-gateway: claiming deliveries failed", "error", err)
		}
		if len(claimed) > 0 {
			if err := g.start(ctx, &wg, claimed); err != nil && ctx.Err() == nil {
				g.log.Warn("events-gateway: loading claimed deliveries failed; their leases lapse and they are retried", "error", err)
			}
			if len(claimed) == free {
				continue // maybe more due: claim again once workers free
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

// slot is the worker an attempt holds: one of Workers, until SlowAfter
// passes and it moves (when there is room) to the slow ones.
type slot struct {
	g     *Gateway
	mu    sync.Mutex
	state int // 0 a worker, 1 slow, 2 released
	timer *time.Timer
}

func (g *Gateway) worker() *slot {
	s := &slot{g: g}
	s.timer = time.AfterFunc(g.cfg.SlowAfter, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.state != 0 {
			return
		}
		select {
		case g.slow <- struct{}{}:
			s.state = 1
			g.free()
		default: // slow ones full: keep the worker
		}
	})
	return s
}

// release ends the attempt's hold (once; later calls do nothing).
func (s *slot) release() {
	s.timer.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch s.state {
	case 0:
		s.g.free()
	case 1:
		<-s.g.slow
	}
	s.state = 2
}

// free returns a worker and wakes the dispatcher, so it claims again.
func (g *Gateway) free() {
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
			w := g.worker()
			defer w.release()
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
	if res.Err == nil {
		g.attempts.WithLabelValues(ep.Kind, "succeeded").Inc()
		g.succeeded <- success{d: d, eventTime: ev.Time, res: res, at: now}
		return
	}
	status, outcome := "pending", "retry"
	next, ok := eventdelivery.NextAttempt(g.cfg.Schedule, int(d.Attempts)+1, now)
	if !res.Retry || !ok {
		status, outcome, next = "failed", "failed", now
	}
	g.attempts.WithLabelValues(ep.Kind, outcome).Inc()
	var disabled *eventdelivery.Event
	err := postgres.InTx(ctx, g.cfg.Pool, func(q *db.Queries) error {
		disabled = nil
		if _, err := eventdelivery.RecordAttempt(ctx, q, d, res); err != nil {
			return err
		}
		n, err := q.DeliveryDone(ctx, db.DeliveryDoneParams{ID: d.ID, Holder: g.holder, Status: status, NextAttemptAt: next,
			LastStatus: res.StatusCode(), LastError: res.ErrorText()})
		if err != nil {
			return err
		}
		if n == 0 {
			return errLeaseLost
		}
		f, err := q.EndpointFailing(ctx, ep.ID)
		if err != nil {
			return err
		}
		if f.Enabled && f.FailingSince != nil && now.Sub(*f.FailingSince) >= g.cfg.DisableAfter {
			reason := fmt.Sprintf("every delivery failed for %s (since %s); the last: %s", now.Sub(*f.FailingSince).Round(time.Second),
				f.FailingSince.UTC().Format(time.RFC3339), textclip.Clip(res.Err.Error(), 300))
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
		// A delivery that gave up lets the next of its order key go: after
		// the commit, as a success does, so an insert that raced it is seen
		// and no lock is held while taking another.
		if status == "failed" && d.OrderKey != "" {
			g.promoteNext(ctx, db.DeliveriesPromoteNextParams{EndpointIds: []uuid.UUID{d.EndpointID},
				OrderKeys: []string{d.OrderKey}, EventSeqs: []int64{d.EventSeq}})
		}
		if disabled != nil {
			g.log.Warn("events-gateway: endpoint disabled after failing too long", "endpoint", ep.ID, "org_id", ep.OrgID, "reason", disabled.Data)
			g.Kick()
		}
	}
}

var errLeaseLost = errors.New("lease lost")

// success is a successful attempt waiting to be written.
type success struct {
	d         db.EventDelivery
	eventTime time.Time
	res       eventdelivery.Result
	at        time.Time
}

// maxWrite bounds the successes written in one statement.
const maxWrite = 256

// writeSucceeded writes successful attempts until the dispatcher closes
// the channel: each write takes everything queued meanwhile, so under
// load one statement records many attempts and when idle each is
// written at once.
func (g *Gateway) writeSucceeded(ctx context.Context) {
	batch := make([]success, 0, maxWrite)
	for s := range g.succeeded {
		batch = append(batch[:0], s)
	more:
		for len(batch) < maxWrite {
			select {
			case s, ok := <-g.succeeded:
				if !ok {
					break more
				}
				batch = append(batch, s)
			default:
				break more
			}
		}
		g.writeBatch(ctx, batch)
	}
}

// writeBatch records successes in one statement, then makes the next
// delivery of each of their order keys due: after the success committed,
// so an insert that raced it is visible (EventFanOut). A write that fails
// leaves the leases to lapse, and the deliveries are made again.
func (g *Gateway) writeBatch(ctx context.Context, batch []success) {
	p := db.DeliveriesSucceededParams{Holder: g.holder}
	for _, s := range batch {
		id, _ := uuid.NewV7()
		code := int32(0)
		if c := s.res.StatusCode(); c != nil {
			code = *c
		}
		p.Ids = append(p.Ids, s.d.ID)
		p.AttemptIds = append(p.AttemptIds, id)
		p.Ats = append(p.Ats, s.at)
		p.StatusCodes = append(p.StatusCodes, code)
		p.DurationsMs = append(p.DurationsMs, int32(s.res.Duration.Milliseconds()))
		p.Responses = append(p.Responses, eventdelivery.LogText(s.res.Response))
	}
	q := db.New(g.cfg.Pool)
	rows, err := q.DeliveriesSucceeded(ctx, p)
	if err != nil {
		g.log.Error("events-gateway: recording attempts failed; their leases lapse and the deliveries are made again", "count", len(batch), "error", err)
		return
	}
	done := rows
	if len(done) < len(batch) {
		// Skipped (locked by a fan-out) or no longer leased: one at a time.
		wrote := make(map[uuid.UUID]bool, len(done))
		for _, d := range done {
			wrote[d.ID] = true
		}
		lapsed := 0
		for i, s := range batch {
			if wrote[s.d.ID] {
				continue
			}
			var code *int32
			if p.StatusCodes[i] != 0 {
				code = &p.StatusCodes[i]
			}
			r, err := q.DeliverySucceeded(ctx, db.DeliverySucceededParams{ID: s.d.ID, Holder: g.holder, AttemptID: p.AttemptIds[i], At: s.at,
				StatusCode: code, DurationMs: p.DurationsMs[i], Response: p.Responses[i]})
			switch {
			case errors.Is(err, pgx.ErrNoRows):
				lapsed++
			case err != nil:
				g.log.Error("events-gateway: recording an attempt failed; the lease lapses and the delivery is made again", "delivery", s.d.ID, "error", err)
			default:
				done = append(done, db.DeliveriesSucceededRow(r))
			}
		}
		if lapsed > 0 {
			g.log.Warn("events-gateway: deliveries' leases lapsed during their attempts; another replica makes them again", "count", lapsed)
		}
	}
	written := make(map[uuid.UUID]bool, len(done))
	var pp db.DeliveriesPromoteNextParams
	for _, d := range done {
		written[d.ID] = true
		if d.OrderKey != "" {
			pp.EndpointIds = append(pp.EndpointIds, d.EndpointID)
			pp.OrderKeys = append(pp.OrderKeys, d.OrderKey)
			pp.EventSeqs = append(pp.EventSeqs, d.EventSeq)
		}
	}
	for _, s := range batch {
		if written[s.d.ID] {
			g.latency.Observe(time.Since(s.eventTime).Seconds())
		}
	}
	if len(pp.EndpointIds) > 0 {
		g.promoteNext(ctx, pp)
	}
}

// promoteNext makes the next delivery of each (endpoint, order key, done
// event) due, in one statement; one a fan-out held locked is promoted on
// its own, waiting for that fan-out (which has committed by then).
// Promotions that fail are left to the sweep.
func (g *Gateway) promoteNext(ctx context.Context, pp db.DeliveriesPromoteNextParams) {
	q := db.New(g.cfg.Pool)
	next, err := q.DeliveriesPromoteNext(ctx, pp)
	if err != nil {
		g.log.Error("events-gateway: promoting the next deliveries failed; they wait for the sweep", "count", len(pp.EndpointIds), "error", err)
		return
	}
	n := 0
	for _, r := range next {
		if !r.Promoted {
			m, err := q.DeliveryPromote(ctx, r.ID)
			if err != nil {
				g.log.Error("events-gateway: promoting the next delivery failed; it waits for the sweep", "delivery", r.ID, "error", err)
			}
			r.Promoted = m > 0
		}
		if r.Promoted {
			n++
		}
	}
	if n > 0 {
		g.Kick()
	}
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
