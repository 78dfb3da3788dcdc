// Package nudger tells devices that their target state changed. Handlers
// report committed changes (a fleet's, or some devices'); a worker works out
// each affected device's new target-state version, with the same code that
// GET /device/v1/state uses, and publishes a DeviceCommandRecord of kind
// "target" per device to flock.device.commands.v1, keyed by device uuid. The
// ingester delivers it over MQTT and the device then GETs its state.
//
// A nudge is only a hint. A device fetches its target state whenever it
// (re)connects, so a nudge that is lost (the process stops, Kafka is down
// past the retries) delays an update until then; it never makes a device run
// the wrong thing. That is why pending changes live in memory only and are
// dropped on shutdown.
package nudger

import (
	"context"
	"encoding/json"
	"github.com/flock-io/flock-api/internal/postgres"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sethvargo/go-retry"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/targetstate"
)

// Notifier is told about committed changes to target states. Both methods
// return at once; the nudges go out later.
type Notifier interface {
	// FleetChanged: every device of the fleet may have a new target.
	FleetChanged(fleetID uuid.UUID)
	// DevicesChanged: these devices may have a new target.
	DevicesChanged(ids ...uuid.UUID)
}

// FleetAfterCommit tells n about a change to a fleet once ctx's transaction
// commits (never if it rolls back). A nil n does nothing.
func FleetAfterCommit(ctx context.Context, n Notifier, fleetID uuid.UUID) {
	if n != nil {
		postgres.AfterCommit(ctx, func() { n.FleetChanged(fleetID) })
	}
}

// DevicesAfterCommit tells n about a change to devices once ctx's
// transaction commits (never if it rolls back). A nil n does nothing.
func DevicesAfterCommit(ctx context.Context, n Notifier, ids ...uuid.UUID) {
	if n != nil && len(ids) > 0 {
		ids = slices.Clone(ids)
		postgres.AfterCommit(ctx, func() { n.DevicesChanged(ids...) })
	}
}

const (
	// pageSize devices are loaded, computed and published together.
	pageSize = 500
	// debounce lets a burst of changes (a script setting ten variables)
	// land in the pending sets before the worker computes them once.
	debounce = 50 * time.Millisecond
	// Each load or publish is tried this many more times, backing off
	// exponentially from retryBase, each try bounded by attemptTimeout
	// (a publish to a dead cluster would otherwise wait for the bus's
	// delivery timeout).
	retries        = 3
	retryBase      = 200 * time.Millisecond
	attemptTimeout = 15 * time.Second
)

// Service collects changes and publishes the nudges. Its pending work is two
// sets, of fleets and of devices, so memory is bounded by the number of
// distinct fleets and devices changed since the last pass, however many
// changes there were; a burst of changes to one fleet is computed once.
type Service struct {
	pool    *pgxpool.Pool
	publish func(context.Context, ...bus.Record) error
	log     *slog.Logger

	pageSize  int
	debounce  time.Duration
	retryBase time.Duration

	mu      sync.Mutex
	fleets  map[uuid.UUID]struct{}
	devices map[uuid.UUID]struct{}
	wake    chan struct{} // one pending wake-up is enough

	published prometheus.Counter
	failures  *prometheus.CounterVec
	passes    prometheus.Counter
	// inPass is 1 from the moment a pass takes the pending changes until
	// it has published its last nudge: with nothing pending and no pass
	// running, every change reported so far has been nudged.
	inPass prometheus.Gauge
}

var _ Notifier = (*Service)(nil)

// New returns a Service publishing to b. Run must be running for nudges to
// go out; reg (may be nil) receives its metrics.
func New(pool *pgxpool.Pool, b *bus.Bus, log *slog.Logger, reg prometheus.Registerer) *Service {
	s := newService(pool, b.Publish, log)
	if reg != nil {
		reg.MustRegister(s.published, s.failures, s.passes, s.inPass,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flock_nudge_pending_fleets",
				Help: "Fleets changed since the nudge worker's last pass."}, func() float64 { f, _ := s.pending(); return float64(f) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flock_nudge_pending_devices",
				Help: "Devices changed since the nudge worker's last pass."}, func() float64 { _, d := s.pending(); return float64(d) }),
		)
	}
	return s
}

func newService(pool *pgxpool.Pool, publish func(context.Context, ...bus.Record) error, log *slog.Logger) *Service {
	if log == nil {
		log = slog.Default()
	}
	s := &Service{
		pool: pool, publish: publish, log: log.With("component", "nudge"),
		pageSize: pageSize, debounce: debounce, retryBase: retryBase,
		fleets: map[uuid.UUID]struct{}{}, devices: map[uuid.UUID]struct{}{}, wake: make(chan struct{}, 1),
		published: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_nudges_published_total",
			Help: "Target nudges (one per device) published to " + bus.TopicDeviceCommands + "."}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flock_nudge_failures_total",
			Help: "Batches of target nudges given up on after retries, by stage: list (a fleet's devices), " +
				"load (computing target states) or publish. The devices get their target when they next connect."},
			[]string{"stage"}),
		passes: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_nudge_passes_total",
			Help: "Passes of the nudge worker over the changes pending at the time."}),
		inPass: prometheus.NewGauge(prometheus.GaugeOpts{Name: "flock_nudge_pass_running",
			Help: "1 while the nudge worker is in a pass (taking the pending changes to publishing the last nudge), else 0."}),
	}
	for _, stage := range []string{stageList, stageLoad, stagePublish} {
		s.failures.WithLabelValues(stage)
	}
	return s
}

const (
	stageList    = "list"
	stageLoad    = "load"
	stagePublish = "publish"
)

// FleetChanged queues the fleet's devices for a nudge.
func (s *Service) FleetChanged(fleetID uuid.UUID) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.fleets[fleetID] = struct{}{}
	s.mu.Unlock()
	s.signal()
}

// DevicesChanged queues the devices for a nudge.
func (s *Service) DevicesChanged(ids ...uuid.UUID) {
	if s == nil || len(ids) == 0 {
		return
	}
	s.mu.Lock()
	for _, id := range ids {
		s.devices[id] = struct{}{}
	}
	s.mu.Unlock()
	s.signal()
}

func (s *Service) signal() {
	select {
	case s.wake <- struct{}{}:
	default: // a wake-up is pending; it will see these changes too
	}
}

func (s *Service) pending() (fleets, devices int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fleets), len(s.devices)
}

// take empties the pending sets.
func (s *Service) take() (fleets, devices []uuid.UUID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.fleets {
		fleets = append(fleets, id)
	}
	for id := range s.devices {
		devices = append(devices, id)
	}
	clear(s.fleets)
	clear(s.devices)
	return fleets, devices
}

// Run publishes nudges for reported changes until ctx is cancelled, then
// returns nil; changes still pending are dropped (see the package comment).
// Run one Run per Service.
func (s *Service) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
		}
		if s.debounce > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(s.debounce):
			}
		}
		// Every change reported before take is computed below from data
		// read after it, which is after its commit; a change reported
		// later wakes the next pass.
		// Set before take, so that no one sees neither pending changes
		// nor a pass.
		s.inPass.Set(1)
		fleets, devices := s.take()
		if len(fleets) == 0 && len(devices) == 0 {
			s.inPass.Set(0)
			continue
		}
		s.passes.Inc()
		s.pass(ctx, fleets, devices)
		s.inPass.Set(0)
	}
}

// pass nudges the devices, then every device of the fleets, skipping the
// devices already nudged in this pass (their state was read after the fleet
// change too).
func (s *Service) pass(ctx context.Context, fleets, devices []uuid.UUID) {
	done := make(map[uuid.UUID]struct{}, len(devices))
	for chunk := range slices.Chunk(devices, s.pageSize) {
		if ctx.Err() != nil {
			return
		}
		s.nudge(ctx, chunk)
		for _, id := range chunk {
			done[id] = struct{}{}
		}
	}
	for _, f := range fleets {
		if ctx.Err() != nil {
			return
		}
		s.nudgeFleet(ctx, f, done)
	}
}

// nudgeFleet walks the fleet's devices a page at a time in index order.
func (s *Service) nudgeFleet(ctx context.Context, fleet uuid.UUID, skip map[uuid.UUID]struct{}) {
	q := db.New(s.pool)
	after := db.FleetDevicePageParams{FleetID: fleet, MaxRows: int32(s.pageSize)}
	for {
		var page []db.FleetDevicePageRow
		err := s.try(ctx, func(ctx context.Context) error {
			var err error
			page, err = q.FleetDevicePage(ctx, after)
			return err
		})
		if err != nil {
			s.giveUp(ctx, stageList, err, "fleet", fleet)
			return
		}
		ids := make([]uuid.UUID, 0, len(page))
		for _, d := range page {
			if _, ok := skip[d.ID]; !ok {
				ids = append(ids, d.ID)
			}
		}
		s.nudge(ctx, ids)
		if len(page) < s.pageSize {
			return
		}
		last := page[len(page)-1]
		after.AfterTime, after.AfterID = last.CreatedAt, last.ID
	}
}

// nudge computes the devices' target states and publishes one record each.
// Devices that no longer exist are skipped.
func (s *Service) nudge(ctx context.Context, ids []uuid.UUID) {
	if len(ids) == 0 {
		return
	}
	var states []api.TargetState
	err := s.try(ctx, func(ctx context.Context) error {
		var err error
		states, err = targetstate.Load(ctx, s.pool, ids)
		return err
	})
	if err != nil {
		s.giveUp(ctx, stageLoad, err, "devices", len(ids))
		return
	}
	if len(states) == 0 {
		return
	}
	recs := make([]bus.Record, len(states))
	for i, st := range states {
		recs[i] = Record(st.DeviceId, st.Version)
	}
	err = s.try(ctx, func(ctx context.Context) error { return s.publish(ctx, recs...) })
	if err != nil {
		s.giveUp(ctx, stagePublish, err, "devices", len(recs))
		return
	}
	s.published.Add(float64(len(recs)))
}

// Record is the nudge telling device that its target state is now version.
func Record(device uuid.UUID, version string) bus.Record {
	kind := events.CommandKindTarget
	// Encoding a struct of strings cannot fail.
	b, _ := json.Marshal(events.DeviceCommandRecord{DeviceId: device.String(), Kind: &kind,
		Target: &events.TargetNudge{Version: version}})
	return bus.Record{Topic: bus.TopicDeviceCommands, Key: []byte(device.String()), Value: b}
}

// try runs fn, retrying failures a few times with exponential backoff. It
// gives up at once when ctx is done.
func (s *Service) try(ctx context.Context, fn func(ctx context.Context) error) error {
	backoff := retry.WithMaxRetries(retries, retry.NewExponential(s.retryBase))
	return retry.Do(ctx, backoff, func(ctx context.Context) error {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		defer cancel()
		if err := fn(actx); err != nil {
			if ctx.Err() != nil {
				return err // stopping: not worth another try
			}
			return retry.RetryableError(err)
		}
		return nil
	})
}

// giveUp counts and logs a batch given up on, unless the worker is stopping
// (then nothing failed: the process is going away).
func (s *Service) giveUp(ctx context.Context, stage string, err error, args ...any) {
	if ctx.Err() != nil {
		return
	}
	s.failures.WithLabelValues(stage).Inc()
	s.log.Warn("target nudges given up; the devices get their target when they next connect",
		append([]any{"stage", stage, "error", err.Error()}, args...)...)
}
