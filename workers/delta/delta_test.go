package delta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/blob"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/imagedelta"
	"github.com/flock-io/flock-api/internal/imagedelta/imagedeltatest"
	"github.com/flock-io/flock-api/internal/layerdelta"
	"github.com/flock-io/flock-api/internal/registry"
	"github.com/flock-io/flock-api/internal/registry/registrytest"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
	"github.com/flock-io/flock-api/internal/testutil/promtest"
)

var quiet = slog.New(slog.DiscardHandler)

const repo = "acme/sensors/hello"

// env is one test's database, bus, registry and blob store, with a real
// image pair pushed.
type env struct {
	pool  *pgxpool.Pool
	bus   *bus.Bus
	reg   *registry.Registry
	blobs *blob.Store
	org   uuid.UUID
	pair  imagedeltatest.Pair
	a, b  string // digests
}

// setup pushes the text pair; setupProgram the pair with a compiled Go
// program, whose deltas take longer.
func setup(t *testing.T) *env {
	t.Helper()
	return setupPair(t, imagedeltatest.TextPair(t))
}

func setupProgram(t *testing.T) *env {
	t.Helper()
	return setupPair(t, imagedeltatest.BuildPair(t))
}

func setupPair(t *testing.T, pair imagedeltatest.Pair) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{pool: pgtest.Pool(t), reg: registrytest.Embedded(t), pair: pair}
	var err error
	if e.bus, err = bus.Open(ctx, bus.Config{Partitions: 2, Log: quiet}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.bus.Close)
	if e.blobs, err = blob.Open(ctx, blob.Config{DataDir: t.TempDir(), Log: quiet}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.blobs.Close)
	if err := e.pool.QueryRow(ctx, `INSERT INTO orgs (name) VALUES ('acme') RETURNING id`).Scan(&e.org); err != nil {
		t.Fatal(err)
	}
	e.a = imagedeltatest.Push(t, e.reg, repo, e.pair.A)
	e.b = imagedeltatest.Push(t, e.reg, repo, e.pair.B)
	return e
}

// worker is a running Worker with its own metrics.
type worker struct {
	*Worker
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

func (e *env) start(t *testing.T, cfg Config, computing func(context.Context, db.ImageDelta)) *worker {
	t.Helper()
	cfg.Pool, cfg.Bus, cfg.Registry, cfg.Blobs, cfg.Log = e.pool, e.bus, e.reg, e.blobs, quiet
	if cfg.TmpDir == "" {
		cfg.TmpDir = t.TempDir()
	}
	w := &worker{reg: prometheus.NewRegistry(), done: make(chan error, 1)}
	cfg.Registerer = w.reg
	w.Worker = New(cfg)
	w.computing = computing
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	go func() { w.done <- w.Run(ctx) }()
	t.Cleanup(func() { w.stop(t) })
	return w
}

// stop cancels the worker and waits for Run to return.
func (w *worker) stop(t *testing.T) {
	t.Helper()
	w.once.Do(func() {
		w.cancel()
		select {
		case err := <-w.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(testutil.Wait):
			t.Errorf("worker did not stop within %s", testutil.Wait)
		}
	})
}

func (w *worker) outcome(t *testing.T, o string) float64 {
	return promtest.Sum(t, w.reg, "flock_delta_computations_total", "outcome", o)
}

func (w *worker) skippedClaimed(t *testing.T) float64 {
	return promtest.Sum(t, w.reg, "flock_delta_requests_skipped_total", "reason", "claimed")
}

// ask stores a pending delta and publishes its request n times.
func (e *env) ask(t *testing.T, fromDigest, toDigest string, n int) db.ImageDelta {
	t.Helper()
	d, err := db.New(e.pool).DeltaCreate(context.Background(), db.DeltaCreateParams{OrgID: e.org,
		FromRepo: repo, FromDigest: fromDigest, ToRepo: repo, ToDigest: toDigest, Architecture: imagedeltatest.Arch})
	if err != nil {
		t.Fatal(err)
	}
	e.publish(t, d, n)
	return d
}

func (e *env) publish(t *testing.T, d db.ImageDelta, n int) {
	t.Helper()
	for range n {
		if err := e.bus.Publish(context.Background(), Request(d)); err != nil {
			t.Fatal(err)
		}
	}
}

func (e *env) get(t *testing.T, id uuid.UUID) db.ImageDelta {
	t.Helper()
	d, err := db.New(e.pool).DeltaGet(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// waitState waits until delta id is in state and returns it.
func (e *env) waitState(t *testing.T, id uuid.UUID, state string) db.ImageDelta {
	t.Helper()
	var d db.ImageDelta
	testutil.Eventually(t, "delta "+id.String()+" "+state, func() error {
		d = e.get(t, id)
		if d.State != state {
			return fmt.Errorf("state %s (error %q)", d.State, d.Error)
		}
		return nil
	})
	return d
}

// waitComputed is waitState for the compiled-program pair, whose deltas
// take a CPU-bound while: under -race, with several test binaries on two
// cores, longer than testutil.Wait. A delta still computing is progress;
// any other state but the one wanted fails at once.
func (e *env) waitComputed(t *testing.T, id uuid.UUID, state string) db.ImageDelta {
	t.Helper()
	deadline := time.Now().Add(4 * testutil.Wait)
	for {
		d := e.get(t, id)
		switch {
		case d.State == state:
			return d
		case d.State != StatePending && d.State != StateComputing:
			t.Fatalf("delta %s: state %s (error %q), want %s", id, d.State, d.Error, state)
		case time.Now().After(deadline):
			t.Fatalf("waited %s for delta %s %s: state %s", 4*testutil.Wait, id, state, d.State)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, not waiting for one
	}
}

// applyStored applies the stored delta of d against A's layers and checks
// it rebuilds B's layers.
func (e *env) applyStored(t *testing.T, d db.ImageDelta, from, to [][]byte) {
	t.Helper()
	body, size, err := e.blobs.Get(context.Background(), *d.BlobKey)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	if size != *d.Size {
		t.Fatalf("stored %d bytes, row says %d", size, *d.Size)
	}
	var got [][]byte
	_, err = imagedelta.Apply(context.Background(), body, func(id string) (layerdelta.Layer, bool) {
		for _, l := range from {
			if fmt.Sprintf("sha256:%x", sha256.Sum256(l)) == id {
				return layerdelta.Layer{R: bytes.NewReader(l), Size: int64(len(l))}, true
			}
		}
		return layerdelta.Layer{}, false
	}, func(imagedelta.IndexEntry) (io.WriteCloser, error) {
		b := &bufCloser{}
		got = append(got, nil)
		i := len(got) - 1
		b.done = func(p []byte) { got[i] = p }
		return b, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(to) {
		t.Fatalf("%d layers rebuilt, want %d", len(got), len(to))
	}
	for i := range to {
		if !bytes.Equal(got[i], to[i]) {
			t.Fatalf("layer %d differs", i)
		}
	}
}

type bufCloser struct {
	bytes.Buffer
	done func([]byte)
}

func (b *bufCloser) Close() error { b.done(b.Bytes()); return nil }

// TestComputesOnceAcrossWorkers: two workers in one group, each delta asked
// for three times: every delta is computed once, and the stored deltas
// rebuild their targets.
func TestComputesOnceAcrossWorkers(t *testing.T) {
	e := setupProgram(t)
	junk := imagedeltatest.Image(t, imagedeltatest.RawLayer(t, bytes.Repeat([]byte("not a tar, "), 5000)))
	c := imagedeltatest.Push(t, e.reg, repo, junk)

	w1 := e.start(t, Config{Concurrency: 2}, nil)
	w2 := e.start(t, Config{}, nil)
	ab := e.ask(t, e.a, e.b, 3)
	ba := e.ask(t, e.b, e.a, 3)
	ac := e.ask(t, e.a, c, 3)

	dab := e.waitComputed(t, ab.ID, StateReady)
	dba := e.waitComputed(t, ba.ID, StateReady)
	dac := e.waitComputed(t, ac.ID, StateFailed)
	if !strings.Contains(dac.Error, "tar") {
		t.Fatalf("failed delta's error %q does not say the layer is not a tar", dac.Error)
	}
	// Every duplicate record reaches a worker, and starts nothing.
	testutil.Eventually(t, "six duplicate requests skipped", func() error {
		if n := w1.skippedClaimed(t) + w2.skippedClaimed(t); n != 6 {
			return fmt.Errorf("%v skipped", n)
		}
		return nil
	})
	var computed float64
	for _, o := range []string{outcomeReady, outcomeNotSmaller, outcomeFailed, outcomeRetry, outcomeLost} {
		computed += w1.outcome(t, o) + w2.outcome(t, o)
	}
	if computed != 3 {
		t.Fatalf("%v computations for 3 deltas", computed)
	}
	for _, d := range []db.ImageDelta{dab, dba, dac} {
		if d.Attempts != 1 || d.LeaseHolder != nil || d.LeaseUntil != nil || d.ComputedAt == nil {
			t.Fatalf("delta %+v", d)
		}
	}
	if *dab.Size >= *dab.LayersSize || *dab.LayersSize == 0 {
		t.Fatalf("delta of %d bytes for %d bytes of layers", *dab.Size, *dab.LayersSize)
	}
	t.Logf("A→B: %d bytes vs %d of layers; B→A: %d vs %d", *dab.Size, *dab.LayersSize, *dba.Size, *dba.LayersSize)
	a, b := imagedeltatest.Uncompressed(t, e.pair.A), imagedeltatest.Uncompressed(t, e.pair.B)
	e.applyStored(t, dab, a, b)
	e.applyStored(t, dba, b, a)
}

func TestNotSmaller(t *testing.T) {
	e := setup(t)
	e.start(t, Config{MaxRatio: 0.01}, nil)
	d := e.waitState(t, e.ask(t, e.a, e.b, 1).ID, StateNotSmaller)
	if d.BlobKey != nil || d.Size == nil || d.LayersSize == nil || *d.Size < *d.LayersSize/100 {
		t.Fatalf("not_smaller row %+v", d)
	}
}

func TestMissingImageFails(t *testing.T) {
	e := setup(t)
	e.start(t, Config{}, nil)
	missing := "sha256:" + strings.Repeat("ab", 32)
	d := e.waitState(t, e.ask(t, e.a, missing, 1).ID, StateFailed)
	if !strings.Contains(d.Error, "target image") {
		t.Fatalf("error %q", d.Error)
	}
}

// TestTransientFailureRetries: with the blob store down, an attempt gives
// the delta back as pending; the last allowed attempt marks it failed.
func TestTransientFailureRetries(t *testing.T) {
	e := setup(t)
	e.blobs.Close() // nothing answers at its endpoint now
	w := e.start(t, Config{MaxAttempts: 2}, nil)
	d := e.ask(t, e.a, e.b, 1)
	testutil.Eventually(t, "first attempt given back", func() error {
		if w.outcome(t, outcomeRetry) != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	got := e.get(t, d.ID)
	if got.State != StatePending || got.Attempts != 1 || !strings.Contains(got.Error, "store the delta") {
		t.Fatalf("after a transient failure: %+v", got)
	}
	again, err := db.New(e.pool).DeltaRerequest(context.Background(), db.DeltaRerequestParams{ID: d.ID, AfterSeconds: 0})
	if err != nil {
		t.Fatal(err)
	}
	e.publish(t, again, 1)
	got = e.waitState(t, d.ID, StateFailed)
	if got.Attempts != 2 {
		t.Fatalf("failed after %d attempts", got.Attempts)
	}
}

// TestStoppedWorkerGivesBack: a worker stopped mid-computation gives the
// delta back at once; another worker then computes it.
func TestStoppedWorkerGivesBack(t *testing.T) {
	e := setup(t)
	started := make(chan struct{})
	var once sync.Once
	w1 := e.start(t, Config{}, func(ctx context.Context, d db.ImageDelta) {
		once.Do(func() { close(started) })
		<-ctx.Done() // a long computation
	})
	d := e.ask(t, e.a, e.b, 1)
	select {
	case <-started:
	case <-time.After(testutil.Wait):
		t.Fatal("computation did not start")
	}
	if got := e.get(t, d.ID); got.State != StateComputing || got.LeaseHolder == nil {
		t.Fatalf("while computing: %+v", got)
	}
	w1.stop(t)
	if w1.outcome(t, outcomeStopped) != 1 {
		t.Fatal("stop not counted")
	}
	got := e.get(t, d.ID)
	if got.State != StatePending || got.LeaseHolder != nil {
		t.Fatalf("after stop: %+v", got)
	}
	e.start(t, Config{}, nil)
	// The stopped worker left its record uncommitted: the group hands it
	// to the new member.
	got = e.waitState(t, d.ID, StateReady)
	if got.Attempts != 2 {
		t.Fatalf("attempts %d", got.Attempts)
	}
}

// TestDeadWorkerLeaseExpires: a worker that died holding a delta (its lease
// is never renewed nor released) blocks nobody past the lease: requests
// meanwhile start nothing, then the re-request finds the lease expired and
// another worker computes the delta.
func TestDeadWorkerLeaseExpires(t *testing.T) {
	e := setup(t)
	d := e.ask(t, e.a, e.b, 0)
	dead := "dead-worker"
	if _, err := db.New(e.pool).DeltaClaim(context.Background(), db.DeltaClaimParams{ID: d.ID, Holder: &dead, LeaseSeconds: 2}); err != nil {
		t.Fatal(err)
	}
	w := e.start(t, Config{}, nil)
	e.publish(t, d, 1)
	testutil.Eventually(t, "request skipped under the dead worker's lease", func() error {
		if w.skippedClaimed(t) != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	if got := e.get(t, d.ID); got.State != StateComputing || *got.LeaseHolder != dead {
		t.Fatalf("under the dead lease: %+v", got)
	}
	// What the device endpoint does on each ask: once the lease ran out
	// the row is requested again.
	var again db.ImageDelta
	testutil.Eventually(t, "lease to expire", func() error {
		var err error
		again, err = db.New(e.pool).DeltaRerequest(context.Background(), db.DeltaRerequestParams{ID: d.ID, AfterSeconds: 0})
		return err
	})
	e.publish(t, again, 1)
	got := e.waitState(t, d.ID, StateReady)
	if got.Attempts != 2 || got.LeaseHolder != nil {
		t.Fatalf("after takeover: %+v", got)
	}
}

// TestLeaseRenewedAndLost: a long computation keeps its lease past its
// length; when another worker takes the row over anyway, the first stops
// and records nothing.
func TestLeaseRenewedAndLost(t *testing.T) {
	e := setup(t)
	started := make(chan db.ImageDelta, 1)
	w := e.start(t, Config{Lease: 1500 * time.Millisecond}, func(ctx context.Context, d db.ImageDelta) {
		started <- d
		<-ctx.Done()
	})
	d := e.ask(t, e.a, e.b, 1)
	var claimed db.ImageDelta
	select {
	case claimed = <-started:
	case <-time.After(testutil.Wait):
		t.Fatal("computation did not start")
	}
	first := *claimed.LeaseUntil
	testutil.Eventually(t, "lease renewed past its first end", func() error {
		got := e.get(t, d.ID)
		if got.LeaseUntil == nil || !got.LeaseUntil.After(first.Add(time.Second)) {
			return errors.New("not renewed yet")
		}
		return nil
	})
	// The first end has passed, and the lease still holds.
	other := "other"
	if _, err := db.New(e.pool).DeltaClaim(context.Background(), db.DeltaClaimParams{ID: d.ID, Holder: &other, LeaseSeconds: 60}); err == nil {
		t.Fatal("another worker claimed a renewed lease")
	}
	// Taken over behind its back.
	if _, err := e.pool.Exec(context.Background(), `UPDATE image_deltas SET lease_holder = 'thief' WHERE id = $1`, d.ID); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "computation to notice the lost lease", func() error {
		if w.outcome(t, outcomeLost) != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	if got := e.get(t, d.ID); got.State != StateComputing || *got.LeaseHolder != "thief" {
		t.Fatalf("the loser changed the row: %+v", got)
	}
}
