// Package delta is the delta target's worker: it computes the image deltas
// devices ask for (GET /device/v1/deltas stores a pending image_deltas row
// and publishes a request on flock.delta.requests.v1) and keeps them in the
// blob store.
//
// Each delta is computed once, whatever the number of replicas and of
// requests: a worker claims the row in PostgreSQL under a lease (pending, or
// computing under a lease that ran out), renews the lease while it works,
// and records the outcome only while it still holds it. A record for a delta
// that is done or held by a live lease changes nothing. A worker that stops
// mid-computation gives the row back (pending); one that dies leaves the
// lease to run out, and the device's next ask publishes the request again
// for another replica to take.
//
// Outcomes: ready (the delta is in the blob store under a key of its own
// claim), not_smaller (the delta is at least MaxRatio of what pulling the
// layers costs: nothing is kept), failed (the images or a layer cannot make
// a delta: missing, no manifest for the architecture, a layer that is not a
// tar; or MaxAttempts transient failures). A transient failure (registry or
// blob store unreachable) gives the row back as pending.
//
// The consumer computes a poll's records (Concurrency at a time) before it
// commits them, so a rebalance waits for the deltas in progress.
package delta

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/blob"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/imagedelta"
	"github.com/flock-io/flock-api/internal/registry"
	"github.com/flock-io/flock-api/internal/textclip"
)

// Group is the delta workers' consumer group.
const Group = "flock-delta"

// Delta states (image_deltas.state).
const (
	StatePending    = "pending"
	StateComputing  = "computing"
	StateReady      = "ready"
	StateNotSmaller = "not_smaller"
	StateFailed     = "failed"
)

const (
	defaultMaxRatio    = 0.8
	defaultLease       = time.Minute
	defaultMaxAttempts = 3
	defaultConcurrency = 1
	// dbTimeout bounds the bookkeeping done after the work's context ended.
	dbTimeout = 15 * time.Second
)

// Config configures New.
type Config struct {
	Pool     *pgxpool.Pool
	Bus      *bus.Bus
	Registry *registry.Registry
	Blobs    *blob.Store
	// MaxRatio: a delta of at least MaxRatio × the layers it replaces is
	// not kept (not_smaller). Default 0.8.
	MaxRatio float64
	// TmpDir holds the spooled layers and the delta while it is computed.
	// Default: the system's.
	TmpDir string
	Log    *slog.Logger
	// Registerer (may be nil) receives the metrics.
	Registerer prometheus.Registerer

	// Lease is how long a claim lasts unrenewed; it is renewed every third
	// of it. Default 1m.
	Lease time.Duration
	// Concurrency is how many deltas one worker computes at once. Default 1.
	Concurrency int
	// MaxAttempts: the claim that fails transiently for the MaxAttempts-th
	// time marks the delta failed. Default 3.
	MaxAttempts int
	// Holder names this worker in leases. Default: host name, pid and a
	// random suffix.
	Holder string
}

// Worker computes deltas. Create it with New and run it with Run.
type Worker struct {
	cfg Config
	log *slog.Logger

	outcomes *prometheus.CounterVec
	skipped  *prometheus.CounterVec
	duration prometheus.Histogram
	ratio    prometheus.Histogram

	// computing, when set (tests), runs as a computation starts.
	computing func(ctx context.Context, d db.ImageDelta)
}

// Outcome labels of flock_delta_computations_total.
const (
	outcomeReady      = StateReady
	outcomeNotSmaller = StateNotSmaller
	outcomeFailed     = StateFailed
	outcomeRetry      = "retry" // given back as pending
	outcomeLost       = "lost"  // lease lost midway; another worker has it
	outcomeStopped    = "stopped"
)

// New returns a worker; nothing runs until Run.
func New(cfg Config) *Worker {
	if cfg.MaxRatio <= 0 {
		cfg.MaxRatio = defaultMaxRatio
	}
	if cfg.Lease <= 0 {
		cfg.Lease = defaultLease
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = defaultMaxAttempts
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = defaultConcurrency
	}
	if cfg.Holder == "" {
		host, _ := os.Hostname()
		var b [4]byte
		rand.Read(b[:])
		cfg.Holder = host + "-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b[:])
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	w := &Worker{cfg: cfg, log: cfg.Log.With("component", "delta", "holder", cfg.Holder),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flock_delta_computations_total",
			Help: "Delta computations this worker ran, by outcome: ready, not_smaller, failed, retry (given back after a transient failure), lost (lease lost midway), stopped (worker stopping)."},
			[]string{"outcome"}),
		skipped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flock_delta_requests_skipped_total",
			Help: "Delta requests that started nothing, by reason: claimed (done, or held under a live lease), invalid (undecodable record), error (the claim failed; the device's next ask publishes again)."},
			[]string{"reason"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flock_delta_compute_seconds",
			Help: "Time to compute and store one delta.", Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)}),
		ratio: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flock_delta_size_ratio",
			Help:    "Delta size over the size of the layers it replaces, per computed delta.",
			Buckets: []float64{0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1, 2}}),
	}
	for _, o := range []string{outcomeReady, outcomeNotSmaller, outcomeFailed, outcomeRetry, outcomeLost, outcomeStopped} {
		w.outcomes.WithLabelValues(o)
	}
	for _, r := range []string{"claimed", "invalid", "error"} {
		w.skipped.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(w.outcomes, w.skipped, w.duration, w.ratio)
	}
	return w
}

// Run consumes delta requests until ctx ends.
func (w *Worker) Run(ctx context.Context) error {
	w.log.Info("delta worker consuming", "topic", bus.TopicDeltaRequests, "group", Group,
		"max_ratio", w.cfg.MaxRatio, "lease", w.cfg.Lease, "concurrency", w.cfg.Concurrency)
	err := w.cfg.Bus.Consume(ctx, Group, []string{bus.TopicDeltaRequests}, w.handle)
	if errors.Is(err, bus.ErrClosed) && ctx.Err() != nil {
		return nil
	}
	return err
}

// Request is the record asking for delta d: publish it once d's row is
// committed.
func Request(d db.ImageDelta) bus.Record {
	b, _ := json.Marshal(events.DeltaRequestRecord{DeltaId: d.ID.String(), OrgId: d.OrgID.String(),
		RequestedAt: time.Now().UTC().Format(time.RFC3339Nano)})
	return bus.Record{Topic: bus.TopicDeltaRequests, Key: []byte(d.ID.String()), Value: b}
}

func (w *Worker) handle(ctx context.Context, recs []bus.Record) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(w.cfg.Concurrency)
	for _, r := range recs {
		var rec events.DeltaRequestRecord
		id, err := uuid.Nil, json.Unmarshal(r.Value, &rec)
		if err == nil {
			id, err = uuid.Parse(rec.DeltaId)
		}
		if err != nil {
			w.skipped.WithLabelValues("invalid").Inc()
			w.log.Warn("undecodable delta request dropped", "key", string(r.Key), "err", err)
			continue
		}
		g.Go(func() error {
			w.process(gctx, id)
			return nil
		})
	}
	g.Wait()
	// A delta cut short by shutdown was given back; its record is left
	// uncommitted, so the group hands it out again.
	return ctx.Err()
}

// process claims delta id and, when this worker got it, computes it.
func (w *Worker) process(ctx context.Context, id uuid.UUID) {
	q := db.New(w.cfg.Pool)
	d, err := q.DeltaClaim(ctx, db.DeltaClaimParams{ID: id, Holder: &w.cfg.Holder, LeaseSeconds: w.cfg.Lease.Seconds()})
	if errors.Is(err, pgx.ErrNoRows) {
		w.skipped.WithLabelValues("claimed").Inc()
		return
	}
	if err != nil {
		if ctx.Err() == nil {
			w.skipped.WithLabelValues("error").Inc()
			w.log.Error("claim delta", "delta", id, "err", err)
		}
		return
	}
	log := w.log.With("delta", d.ID, "from", d.FromRepo+"@"+d.FromDigest, "to", d.ToRepo+"@"+d.ToDigest,
		"architecture", d.Architecture, "attempt", d.Attempts)
	log.Info("computing delta")
	start := time.Now()

	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	renewDone := make(chan struct{})
	go func() {
		defer close(renewDone)
		w.renew(wctx, cancel, d.ID)
	}()
	res, err := w.compute(wctx, d)
	cancel(nil)
	<-renewDone

	// Bookkeeping outlives a cancelled ctx, within bounds.
	bctx, bcancel := context.WithTimeout(context.WithoutCancel(ctx), dbTimeout)
	defer bcancel()
	outcome := w.record(bctx, log, d, res, err, errors.Is(context.Cause(wctx), errLeaseLost), ctx.Err() != nil)
	w.outcomes.WithLabelValues(outcome).Inc()
	if outcome == outcomeReady || outcome == outcomeNotSmaller {
		w.duration.Observe(time.Since(start).Seconds())
	}
}

var errLeaseLost = errors.New("delta lease lost")

// renew extends the lease every third of it until ctx ends; when the lease
// is lost (another worker took the row, or renewals failed for a whole
// lease) it cancels the computation.
func (w *Worker) renew(ctx context.Context, cancel context.CancelCauseFunc, id uuid.UUID) {
	every := w.cfg.Lease / 3
	t := time.NewTicker(every)
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := db.New(w.cfg.Pool).DeltaRenew(ctx, db.DeltaRenewParams{ID: id, Holder: &w.cfg.Holder, LeaseSeconds: w.cfg.Lease.Seconds()})
		switch {
		case err == nil && n == 1:
			lastOK = time.Now()
		case err == nil:
			cancel(errLeaseLost)
			return
		case ctx.Err() != nil:
			return
		default:
			w.log.Warn("renew delta lease", "delta", id, "err", err)
			if time.Since(lastOK) >= w.cfg.Lease {
				cancel(errLeaseLost)
				return
			}
		}
	}
}

// result is what a computation produced.
type result struct {
	key        string // blob key, when ready
	size       int64
	layersSize int64
	notSmaller bool
}

// permanent marks an error no retry can mend.
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

func (w *Worker) compute(ctx context.Context, d db.ImageDelta) (result, error) {
	var res result
	if w.computing != nil {
		w.computing(ctx, d)
	}
	reg := w.cfg.Registry
	from, err := reg.Resolve(ctx, d.FromRepo, d.FromDigest, d.Architecture)
	if err != nil {
		return res, classify(fmt.Errorf("resolve the source image: %w", err))
	}
	to, err := reg.Resolve(ctx, d.ToRepo, d.ToDigest, d.Architecture)
	if err != nil {
		return res, classify(fmt.Errorf("resolve the target image: %w", err))
	}
	f, err := os.CreateTemp(w.cfg.TmpDir, "delta-*.tar")
	if err != nil {
		return res, err
	}
	defer func() {
		f.Close()
		os.Remove(f.Name())
	}()
	st, err := imagedelta.Compute(ctx, from, to, reg.Layer, f, w.cfg.TmpDir, nil)
	if err != nil {
		return res, classify(err)
	}
	res.size, res.layersSize = st.DeltaSize, st.LayersSize
	if st.LayersSize > 0 {
		w.ratio.Observe(float64(st.DeltaSize) / float64(st.LayersSize))
	}
	// Nothing to download either way (every layer present): the delta is
	// just its index, and says so.
	if st.LayersSize > 0 && float64(st.DeltaSize) >= w.cfg.MaxRatio*float64(st.LayersSize) {
		res.notSmaller = true
		return res, nil
	}
	if _, err := f.Seek(0, 0); err != nil {
		return res, err
	}
	// A key per claim: a worker that lost its lease never overwrites or
	// deletes the object of the one that took the row over.
	key := "deltas/" + d.OrgID.String() + "/" + d.ID.String() + "/" + strconv.Itoa(int(d.Attempts)) + ".tar"
	if err := w.cfg.Blobs.Put(ctx, key, f, st.DeltaSize); err != nil {
		return res, fmt.Errorf("store the delta: %w", err)
	}
	res.key = key
	return res, nil
}

// classify marks the errors that make the pair undeltable as permanent.
func classify(err error) error {
	switch {
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrNoPlatform),
		errors.Is(err, imagedelta.ErrNotTar):
		return permanent{err}
	}
	return err
}

// record writes the outcome while this worker still holds the lease, and
// says which it was.
func (w *Worker) record(ctx context.Context, log *slog.Logger, d db.ImageDelta, res result, err error, lost, stopping bool) string {
	q := db.New(w.cfg.Pool)
	holder := &w.cfg.Holder
	finish := func(state string, errText string) (bool, error) {
		p := db.DeltaFinishParams{ID: d.ID, Holder: holder, State: state, Error: errText, LayersSize: &res.layersSize, Size: &res.size}
		if state == StateReady {
			p.BlobKey = &res.key
		}
		if state == StateFailed && res.layersSize == 0 {
			p.LayersSize, p.Size = nil, nil
		}
		n, err := q.DeltaFinish(ctx, p)
		return n == 1, err
	}
	switch {
	case lost:
		log.Warn("delta lease lost; another worker computes it")
		w.dropBlob(ctx, res.key)
		return outcomeLost
	case err != nil && stopping:
		// Stopping: give the row back at once rather than at lease end.
		if _, rerr := q.DeltaRelease(ctx, db.DeltaReleaseParams{ID: d.ID, Holder: holder, Error: "worker stopped"}); rerr != nil {
			log.Warn("give back delta", "err", rerr)
		}
		w.dropBlob(ctx, res.key)
		log.Info("delta computation stopped; given back")
		return outcomeStopped
	case err != nil:
		var p permanent
		if errors.As(err, &p) || int(d.Attempts) >= w.cfg.MaxAttempts {
			ok, ferr := finish(StateFailed, errorText(err))
			if ferr != nil || !ok {
				log.Warn("record failed delta", "ok", ok, "err", ferr)
				return outcomeLost
			}
			log.Warn("delta failed", "err", err)
			return outcomeFailed
		}
		if _, rerr := q.DeltaRelease(ctx, db.DeltaReleaseParams{ID: d.ID, Holder: holder, Error: errorText(err)}); rerr != nil {
			log.Warn("give back delta", "err", rerr)
		}
		log.Warn("delta attempt failed; given back to retry", "err", err)
		return outcomeRetry
	case res.notSmaller:
		ok, ferr := finish(StateNotSmaller, "")
		if ferr != nil || !ok {
			log.Warn("record delta", "ok", ok, "err", ferr)
			return outcomeLost
		}
		log.Info("delta not smaller than the layers; not kept", "size", res.size, "layers_size", res.layersSize)
		return outcomeNotSmaller
	default:
		ok, ferr := finish(StateReady, "")
		if ferr != nil || !ok {
			log.Warn("record delta", "ok", ok, "err", ferr)
			w.dropBlob(ctx, res.key)
			return outcomeLost
		}
		log.Info("delta ready", "key", res.key, "size", res.size, "layers_size", res.layersSize)
		return outcomeReady
	}
}

func (w *Worker) dropBlob(ctx context.Context, key string) {
	if key == "" {
		return
	}
	if err := w.cfg.Blobs.Delete(ctx, key); err != nil {
		w.log.Warn("delete a delta no row names", "key", key, "err", err)
	}
}

// errorText is an error as a delta's row keeps it.
func errorText(err error) string { return textclip.Clip(err.Error(), 2000) }
