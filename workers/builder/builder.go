// Package builder is the builder target's worker: it builds the images of
// uploaded projects with buildah and pushes them to the platform registry,
// and the build that settles its last image ends the build (image indexes,
// release final or failed, log to the blob store; see internal/builds).
//
// Work comes from Kafka (flock.build.requests.v1, consumer group
// flock-builder) and from polling PostgreSQL: a record reaches one replica
// of the group, which may not build that architecture, and records can be
// lost; the poll finds whatever a replica can take. Each image (a service
// for an architecture) is claimed under a lease in build_images, renewed
// while it builds, so it is built once whatever the number of replicas and
// records; a replica that dies leaves the lease to run out and another
// takes the image again.
//
// A replica builds the architectures it runs on or emulates (binfmt_misc)
// for any Dockerfile, and any architecture for Dockerfiles that run nothing
// of it (COPY-only images, RUN only in FROM --platform=$BUILDPLATFORM
// stages). An image no running builder can take waits, and fails with
// no_builder after QueueTimeout.
package builder

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
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/blob"
	"github.com/flock-io/flock-api/internal/buildah"
	"github.com/flock-io/flock-api/internal/builds"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/registry"
)

// Group is the builders' consumer group.
const Group = "flock-builder"

// Config configures New.
type Config struct {
	Pool     *pgxpool.Pool
	Bus      *bus.Bus
	Blobs    *blob.Store
	Registry *registry.Registry
	Finisher *builds.Finisher
	Engine   *buildah.Engine
	// Credential returns the registry password of a build (a build
	// credential of the registry-proxy) valid for ttl.
	Credential func(build uuid.UUID, ttl time.Duration) (string, error)
	// RegistryHost is the registry-proxy's public host, which images and
	// Dockerfiles name; PushHost is where buildah reaches it (default
	// RegistryHost), over plain HTTP when Insecure.
	RegistryHost string
	PushHost     string
	Insecure     bool
	// InsecureRegistries are other registries (base images) reached over
	// plain HTTP.
	InsecureRegistries []string
	// DataDir holds the builds' working directories and the layer
	// storage (one per fleet, so tenants never share cached layers).
	DataDir string
	// Architectures this replica runs on or emulates; default the host's
	// (buildah.NativeArchitectures).
	Architectures []string
	// Timeout bounds one image's build and push (FLOCK_BUILD_TIMEOUT,
	// default 1h); LogLimit a build's log (FLOCK_BUILD_LOG_LIMIT, default
	// 16 MiB); QueueTimeout how long an image waits for a builder able to
	// take it (FLOCK_BUILD_QUEUE_TIMEOUT, default 15m).
	Timeout      time.Duration
	LogLimit     int64
	QueueTimeout time.Duration
	// Lease is how long a claim lasts unrenewed (default 1m; renewed every
	// third). Poll is how often the replica looks for work and heartbeats
	// (default 2s). Concurrency is how many images it builds at once
	// (default 1).
	Lease       time.Duration
	Poll        time.Duration
	Concurrency int
	// Holder names this replica in leases and in builders; default host
	// name, pid and a random suffix.
	Holder     string
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// Worker builds images. Create it with New, run it with Run.
type Worker struct {
	cfg  Config
	log  *slog.Logger
	sem  chan struct{}
	wake chan uuid.UUID // builds named by records, for the poll loop
	busy sync.Map       // build id → struct{}: builds this replica claims from now

	outcomes *prometheus.CounterVec
	duration prometheus.Histogram
}

// New returns a worker; nothing runs until Run.
func New(cfg Config) *Worker {
	if cfg.PushHost == "" {
		cfg.PushHost = cfg.RegistryHost
	}
	if len(cfg.Architectures) == 0 {
		cfg.Architectures = buildah.NativeArchitectures()
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Hour
	}
	if cfg.LogLimit <= 0 {
		cfg.LogLimit = 16 << 20
	}
	if cfg.QueueTimeout <= 0 {
		cfg.QueueTimeout = 15 * time.Minute
	}
	if cfg.Lease <= 0 {
		cfg.Lease = time.Minute
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 2 * time.Second
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 1
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
	w := &Worker{cfg: cfg, log: cfg.Log.With("component", "builder", "holder", cfg.Holder),
		sem: make(chan struct{}, cfg.Concurrency), wake: make(chan uuid.UUID, 256),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flock_builder_images_total",
			Help: "Images this builder worked on, by outcome: succeeded, failed, cancelled, lost (lease lost), stopped (given back as the builder stopped)."},
			[]string{"outcome"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "flock_builder_image_seconds",
			Help: "Time to build and push one image.", Buckets: prometheus.ExponentialBuckets(1, 2, 13)}),
	}
	for _, o := range []string{"succeeded", "failed", "cancelled", "lost", "stopped"} {
		w.outcomes.WithLabelValues(o)
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(w.outcomes, w.duration)
	}
	return w
}

// Holder names this replica.
func (w *Worker) Holder() string { return w.cfg.Holder }

// Run builds until ctx ends.
func (w *Worker) Run(ctx context.Context) error {
	w.log.Info("builder consuming", "topic", bus.TopicBuildRequests, "group", Group,
		"architectures", w.cfg.Architectures, "concurrency", w.cfg.Concurrency, "push_host", w.cfg.PushHost)
	if err := db.New(w.cfg.Pool).BuilderSeen(ctx, db.BuilderSeenParams{Holder: w.cfg.Holder, Architectures: w.cfg.Architectures}); err != nil {
		return fmt.Errorf("register builder: %w", err)
	}
	defer func() {
		c, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = db.New(w.cfg.Pool).BuilderGone(c, w.cfg.Holder)
	}()
	g, gctx := errgroup.WithContext(ctx)
	if w.cfg.Bus != nil {
		g.Go(func() error {
			err := w.cfg.Bus.Consume(gctx, Group, []string{bus.TopicBuildRequests}, w.handle)
			if errors.Is(err, bus.ErrClosed) && gctx.Err() != nil {
				return nil
			}
			return err
		})
	}
	g.Go(func() error { return w.pollLoop(gctx) })
	err := g.Wait()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// handle turns records into wake-ups of the poll loop and returns at once:
// the claim in PostgreSQL, not the record, is what an image's build hangs
// on, so a record is committed before its build ends (a replica that dies
// leaves its lease to run out, and another replica's poll takes the image).
// Building inside the handler would hold the group's rebalances for as
// long as a build lasts.
func (w *Worker) handle(ctx context.Context, recs []bus.Record) error {
	for _, r := range recs {
		var rec events.BuildRequestRecord
		if err := json.Unmarshal(r.Value, &rec); err != nil {
			w.log.WarnContext(ctx, "build request: undecodable record", "error", err.Error())
			continue
		}
		id, err := uuid.Parse(rec.BuildId)
		if err != nil {
			w.log.WarnContext(ctx, "build request: bad build id", "build_id", rec.BuildId)
			continue
		}
		select {
		case w.wake <- id:
		default: // the next poll finds it
		}
	}
	return nil
}

// pollLoop heartbeats, takes work the records did not bring, fails images
// no builder can take in time, and ends builds whose last image's builder
// stopped before it could.
func (w *Worker) pollLoop(ctx context.Context) error {
	t := time.NewTicker(w.cfg.Poll)
	defer t.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	start := func(id uuid.UUID) {
		if _, busy := w.busy.Load(id); busy {
			return
		}
		wg.Add(1)
		go func() { defer wg.Done(); w.work(ctx, id) }()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case id := <-w.wake:
			start(id)
			continue
		case <-t.C:
		}
		q := db.New(w.cfg.Pool)
		if err := q.BuilderSeen(ctx, db.BuilderSeenParams{Holder: w.cfg.Holder, Architectures: w.cfg.Architectures}); err != nil {
			w.log.WarnContext(ctx, "builder heartbeat", "error", err.Error())
			continue
		}
		open, err := q.BuildOpenForBuilder(ctx, db.BuildOpenForBuilderParams{Architectures: w.cfg.Architectures, MaxRows: 20})
		if err != nil {
			w.log.WarnContext(ctx, "builder poll", "error", err.Error())
			continue
		}
		for _, o := range open {
			start(o.BuildID)
		}
		if err := w.sweep(ctx, q); err != nil {
			w.log.WarnContext(ctx, "builder sweep", "error", err.Error())
		}
	}
}

func (w *Worker) sweep(ctx context.Context, q *db.Queries) error {
	waiting, err := q.BuildImagesWaiting(ctx, w.cfg.QueueTimeout.Seconds())
	if err != nil {
		return fmt.Errorf("waiting images: %w", err)
	}
	if len(waiting) > 0 {
		live, err := q.BuildersLive(ctx, (10 * w.cfg.Poll).Seconds())
		if err != nil {
			return fmt.Errorf("running builders: %w", err)
		}
		for _, img := range waiting {
			if builds.CanAnyBuild(live, img) {
				continue
			}
			arch := api.Architecture(img.Architecture)
			e, _ := json.Marshal(api.BuildError{Code: builds.CodeNoBuilder, Service: &img.Service, Architecture: &arch,
				Detail: fmt.Sprintf("waited %s: %s", w.cfg.QueueTimeout, builds.NoBuilder(img))})
			n, err := q.BuildImageFailQueued(ctx, db.BuildImageFailQueuedParams{BuildID: img.BuildID, Service: img.Service,
				Architecture: img.Architecture, Error: e})
			if err != nil {
				return fmt.Errorf("fail waiting image: %w", err)
			}
			if n > 0 {
				_ = builds.Append(ctx, w.cfg.Pool, img.BuildID, w.cfg.LogLimit, []builds.Line{{TS: time.Now(),
					Service: img.Service, Arch: img.Architecture, Text: "failed: " + builds.NoBuilder(img)}})
			}
		}
	}
	stale, err := q.BuildsOpenStale(ctx)
	if err != nil {
		return fmt.Errorf("builds to end: %w", err)
	}
	for _, id := range stale {
		if _, err := w.cfg.Finisher.Finish(ctx, id); err != nil {
			w.log.WarnContext(ctx, "end build", "build_id", id, "error", err.Error())
		}
	}
	return nil
}

// work builds every image of build id this replica can take, one claim at
// a time, then ends the build if that was its last image.
func (w *Worker) work(ctx context.Context, id uuid.UUID) {
	if _, loaded := w.busy.LoadOrStore(id, struct{}{}); loaded {
		return
	}
	defer w.busy.Delete(id)
	for ctx.Err() == nil {
		select {
		case w.sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		img, err := db.New(w.cfg.Pool).BuildImageClaim(ctx, db.BuildImageClaimParams{Holder: &w.cfg.Holder,
			LeaseSeconds: w.cfg.Lease.Seconds(), BuildID: id, Architectures: w.cfg.Architectures})
		if err != nil {
			<-w.sem
			if !errors.Is(err, pgx.ErrNoRows) && ctx.Err() == nil {
				w.log.WarnContext(ctx, "claim image", "build_id", id, "error", err.Error())
			}
			break
		}
		w.build(ctx, img)
		<-w.sem
	}
	if ctx.Err() != nil {
		return
	}
	if _, err := w.cfg.Finisher.Finish(ctx, id); err != nil {
		w.log.WarnContext(ctx, "end build", "build_id", id, "error", err.Error())
	}
}
