// Package commands carries device commands after the API stored them: it
// sends each new command to its device (a DeviceCommandRecord of kind
// "command" on flock.device.commands.v1, which the relay in the ingester
// turns into the device's MQTT commands message), sends a device's open
// commands again each time the device connects, expires the commands their
// devices did not finish in time, and publishes every status change on
// flock.device.command-events.v1. The ingester applies the devices'
// answers with ApplyResults.
//
// It runs with the api target: the API creates commands and registers them
// here after commit, and whatever replica does that holds the queue; the
// reconnect consumer is a Kafka consumer group and the expiry pass takes
// rows with SKIP LOCKED, so any number of api replicas share both.
package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
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
	"github.com/flock-io/flock-api/internal/postgres"
)

// ReconnectGroup is the consumer group that follows devices connecting.
const ReconnectGroup = "flock-commands-reconnect"

const (
	// passEvery is how often expired commands are marked and forgotten
	// announcements made; an expiry shows at most this late.
	passEvery = time.Second
	// announceGrace: a command unannounced for this long after its commit
	// is announced by the pass instead (its process stopped, or Kafka was
	// down). Long enough that the normal path is not raced.
	announceGrace = 10 * time.Second
	// passBatch rows are expired or announced per transaction.
	passBatch = 500
	// maxQueued bounds the commands waiting in memory for their first
	// send; beyond it (Kafka down for long) they wait for the pass.
	maxQueued = 10000
	// publishTimeout bounds one publish; the bus's own delivery timeout
	// is minutes.
	publishTimeout = 15 * time.Second
	retryMin       = 100 * time.Millisecond
	retryMax       = 5 * time.Second
)

// Service sends commands to devices and moves them along. Create it with
// New and run it with Run.
type Service struct {
	pool    *pgxpool.Pool
	bus     *bus.Bus
	publish func(context.Context, ...bus.Record) error
	log     *slog.Logger

	mu    sync.Mutex
	queue []db.Command
	wake  chan struct{}

	sent     *prometheus.CounterVec
	expired  prometheus.Counter
	failures *prometheus.CounterVec
}

// New returns a Service publishing to b; reg (may be nil) receives its
// metrics.
func New(pool *pgxpool.Pool, b *bus.Bus, log *slog.Logger, reg prometheus.Registerer) *Service {
	if log == nil {
		log = slog.Default()
	}
	s := &Service{pool: pool, bus: b, publish: b.Publish, log: log.With("component", "commands"),
		wake: make(chan struct{}, 1),
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flock_commands_sent_total",
			Help: "Commands sent towards devices on " + bus.TopicDeviceCommands + ", by reason: created, reconnect (the device connected while the command was open) or late (announced by the pass after its first send failed)."},
			[]string{"reason"}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_commands_expired_total",
			Help: "Commands that expired before their device finished them."}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flock_commands_failures_total",
			Help: "Failed attempts of the commands worker, by stage (send, reconnect, expire, late); each is tried again."},
			[]string{"stage"}),
	}
	for _, r := range []string{reasonCreated, reasonReconnect, reasonLate} {
		s.sent.WithLabelValues(r)
	}
	for _, st := range []string{reasonCreated, reasonReconnect, stageExpire, reasonLate} {
		s.failures.WithLabelValues(st)
	}
	if reg != nil {
		reg.MustRegister(s.sent, s.expired, s.failures)
	}
	return s
}

const (
	reasonCreated   = "created"
	reasonReconnect = "reconnect"
	reasonLate      = "late"
	stageExpire     = "expire"
)

// Announce sends c, just created in ctx's transaction, to its device and
// publishes its pending event once that transaction commits (never if it
// rolls back). It returns at once.
func (s *Service) Announce(ctx context.Context, c db.Command) {
	postgres.AfterCommit(ctx, func() { s.enqueue(c) })
}

func (s *Service) enqueue(c db.Command) {
	s.mu.Lock()
	if len(s.queue) < maxQueued {
		s.queue = append(s.queue, c)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run sends new commands, follows reconnects and runs the pass until ctx
// ends.
func (s *Service) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { s.sendLoop(ctx); return nil })
	g.Go(func() error { s.passLoop(ctx); return nil })
	g.Go(func() error {
		err := s.bus.Consume(ctx, ReconnectGroup, []string{bus.TopicDeviceConnectivity}, s.reconnected)
		if errors.Is(err, bus.ErrClosed) && ctx.Err() != nil {
			return nil
		}
		return err
	})
	return g.Wait()
}

// sendLoop sends what Announce queued. A send that fails is left to the
// pass, which finds the command still unannounced.
func (s *Service) sendLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		}
		s.mu.Lock()
		batch := s.queue
		s.queue = nil
		s.mu.Unlock()
		if len(batch) == 0 {
			continue
		}
		if err := s.announce(ctx, db.New(s.pool), batch); err != nil && ctx.Err() == nil {
			s.failures.WithLabelValues(reasonCreated).Inc()
			s.log.Warn("sending new commands failed; the pass sends them later", "commands", len(batch), "error", err)
			continue
		}
		s.sent.WithLabelValues(reasonCreated).Add(float64(len(batch)))
	}
}

// announce publishes each command's pending event and then its record for
// its device, then notes that it did. The events go first, so an answer of
// the device never precedes its command's pending event on the topic.
func (s *Service) announce(ctx context.Context, q *db.Queries, cs []db.Command) error {
	evs := make([]bus.Record, 0, len(cs))
	recs := make([]bus.Record, 0, len(cs))
	ids := make([]uuid.UUID, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
		pending := c
		pending.Status, pending.DeliveredAt, pending.CompletedAt, pending.Error = StatusPending, nil, nil, nil
		evs = append(evs, EventRecord(pending))
		if open(c) {
			recs = append(recs, DeviceRecord(c))
		}
	}
	pctx, cancel := context.WithTimeout(ctx, publishTimeout)
	defer cancel()
	if err := s.publish(pctx, evs...); err != nil {
		return err
	}
	if err := s.publish(pctx, recs...); err != nil {
		return err
	}
	if err := q.CommandsAnnounced(ctx, ids); err != nil {
		return fmt.Errorf("note %d commands sent: %w", len(ids), err)
	}
	return nil
}

// open reports whether c is still to be carried out.
func open(c db.Command) bool {
	return (c.Status == StatusPending || c.Status == StatusDelivered) && time.Now().Before(c.ExpiresAt)
}

func (s *Service) passLoop(ctx context.Context) {
	t := time.NewTicker(passEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.expire(ctx); err != nil && ctx.Err() == nil {
			s.failures.WithLabelValues(stageExpire).Inc()
			s.log.Warn("expiring commands failed; next pass tries again", "error", err)
		}
		if err := s.announceLate(ctx); err != nil && ctx.Err() == nil {
			s.failures.WithLabelValues(reasonLate).Inc()
			s.log.Warn("sending late commands failed; next pass tries again", "error", err)
		}
	}
}

// expire marks open commands past their expiry expired, publishing their
// events before the commit (see ApplyResults for why).
func (s *Service) expire(ctx context.Context) error {
	for {
		var n int
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			cs, err := db.New(tx).CommandsExpire(ctx, passBatch)
			if err != nil {
				return err
			}
			n = len(cs)
			if n == 0 {
				return nil
			}
			recs := make([]bus.Record, n)
			for i, c := range cs {
				recs[i] = EventRecord(c)
			}
			pctx, cancel := context.WithTimeout(ctx, publishTimeout)
			defer cancel()
			return s.publish(pctx, recs...)
		})
		if err != nil {
			return fmt.Errorf("expire commands: %w", err)
		}
		s.expired.Add(float64(n))
		if n < passBatch {
			return nil
		}
	}
}

// announceLate sends the commands whose first send did not happen.
func (s *Service) announceLate(ctx context.Context) error {
	for {
		var n int
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			q := db.New(tx)
			cs, err := q.CommandsUnannounced(ctx, db.CommandsUnannouncedParams{GraceSeconds: announceGrace.Seconds(), MaxRows: passBatch})
			if err != nil || len(cs) == 0 {
				return err
			}
			n = len(cs)
			return s.announce(ctx, q, cs)
		})
		if err != nil {
			return fmt.Errorf("send late commands: %w", err)
		}
		s.sent.WithLabelValues(reasonLate).Add(float64(n))
		if n < passBatch {
			return nil
		}
	}
}

// connectivity is what reconnected reads of a ConnectivityRecord.
type connectivity struct {
	DeviceID string `json:"device_id"`
	Event    string `json:"event"`
}

// reconnected sends the open commands of the devices that connected in
// recs again. A failure is retried until it succeeds or ctx ends, so the
// batch is never committed unsent.
func (s *Service) reconnected(ctx context.Context, recs []bus.Record) error {
	seen := map[uuid.UUID]bool{}
	var devices []uuid.UUID
	for _, r := range recs {
		var c connectivity
		if err := json.Unmarshal(r.Value, &c); err != nil || c.Event != "connected" {
			continue
		}
		id, err := uuid.Parse(c.DeviceID)
		if err != nil || seen[id] {
			continue
		}
		seen[id] = true
		devices = append(devices, id)
	}
	if len(devices) == 0 {
		return nil
	}
	return retry.Do(ctx, retry.WithCappedDuration(retryMax, retry.NewExponential(retryMin)), func(ctx context.Context) error {
		cs, err := db.New(s.pool).CommandsOpenForDevices(ctx, devices)
		if err == nil && len(cs) > 0 {
			out := make([]bus.Record, len(cs))
			for i, c := range cs {
				out[i] = DeviceRecord(c)
			}
			pctx, cancel := context.WithTimeout(ctx, publishTimeout)
			err = s.publish(pctx, out...)
			cancel()
		}
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			s.failures.WithLabelValues(reasonReconnect).Inc()
			s.log.Warn("sending commands to reconnected devices failed; retrying", "devices", len(devices), "error", err)
			return retry.RetryableError(err)
		}
		s.sent.WithLabelValues(reasonReconnect).Add(float64(len(cs)))
		return nil
	})
}
