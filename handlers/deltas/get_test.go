package deltas_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers/deltas"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/blob"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/imagedelta"
	"github.com/flock-io/flock-api/internal/imagedelta/imagedeltatest"
	"github.com/flock-io/flock-api/internal/layerdelta"
	"github.com/flock-io/flock-api/internal/registry"
	"github.com/flock-io/flock-api/internal/registry/registrytest"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
	"github.com/flock-io/flock-api/workers/delta"
)

var quiet = slog.New(slog.DiscardHandler)

const repo = "acme/sensors/hello"

// countingBus counts the delta requests published through it.
type countingBus struct {
	*bus.Bus
	n atomic.Int64
}

func (c *countingBus) Publish(ctx context.Context, recs ...bus.Record) error {
	c.n.Add(int64(len(recs)))
	return c.Bus.Publish(ctx, recs...)
}

// env: an organisation "acme" with fleet "sensors" whose device runs
// release 1 (image A of service hello) and is targeted at release 2 (image
// B); another fleet's release holds image C.
type env struct {
	pool   *pgxpool.Pool
	bus    *countingBus
	reg    *registry.Registry
	blobs  *blob.Store
	h      *deltas.Deltas
	pair   imagedeltatest.Pair
	a, b   string
	org    uuid.UUID
	fleet  uuid.UUID
	device uuid.UUID
	other  string // an image of another fleet's release
	junk   string // an image with a layer that is not a tar, in release 2 too
}

func setup(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	e := &env{pool: pgtest.Pool(t), reg: registrytest.Embedded(t), pair: imagedeltatest.TextPair(t), device: uuid.New()}
	b, err := bus.Open(ctx, bus.Config{Partitions: 2, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	e.bus = &countingBus{Bus: b}
	if e.blobs, err = blob.Open(ctx, blob.Config{DataDir: t.TempDir(), Log: quiet}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.blobs.Close)
	e.a = imagedeltatest.Push(t, e.reg, repo, e.pair.A)
	e.b = imagedeltatest.Push(t, e.reg, repo, e.pair.B)
	e.junk = imagedeltatest.Push(t, e.reg, "acme/sensors/junk",
		imagedeltatest.Image(t, imagedeltatest.RawLayer(t, bytes.Repeat([]byte("no tar "), 4000))))
	e.other = "sha256:" + strings.Repeat("cd", 32)

	arch := imagedeltatest.Arch
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := e.pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if err := e.pool.QueryRow(ctx, `INSERT INTO orgs (name) VALUES ('acme') RETURNING id`).Scan(&e.org); err != nil {
		t.Fatal(err)
	}
	if err := e.pool.QueryRow(ctx, `INSERT INTO fleets (org_id, name, architecture) VALUES ($1, 'sensors', $2) RETURNING id`, e.org, arch).Scan(&e.fleet); err != nil {
		t.Fatal(err)
	}
	var otherFleet uuid.UUID
	if err := e.pool.QueryRow(ctx, `INSERT INTO fleets (org_id, name, architecture) VALUES ($1, 'others', $2) RETURNING id`, e.org, arch).Scan(&otherFleet); err != nil {
		t.Fatal(err)
	}
	services := func(imgs ...string) string {
		var out []map[string]any
		for i, d := range imgs {
			name := []string{"hello", "junk"}[i]
			out = append(out, map[string]any{"name": name,
				"images": map[string]any{arch: map[string]any{"image": "registry.example.com:5000/acme/sensors/" + name + ":v", "digest": d}}})
		}
		b, _ := json.Marshal(out)
		return string(b)
	}
	r1, r2, r3 := uuid.New(), uuid.New(), uuid.New()
	exec(`INSERT INTO releases (id, org_id, fleet_id, status, services, finalized_at) VALUES ($1, $2, $3, 'final', $4, now() - interval '1 hour')`,
		r1, e.org, e.fleet, services(e.a))
	exec(`INSERT INTO releases (id, org_id, fleet_id, status, services, finalized_at) VALUES ($1, $2, $3, 'final', $4, now())`,
		r2, e.org, e.fleet, services(e.b, e.junk))
	exec(`INSERT INTO releases (id, org_id, fleet_id, status, services, finalized_at) VALUES ($1, $2, $3, 'final', $4, now())`,
		r3, e.org, otherFleet, services(e.other))
	exec(`INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key, running_release_id)
		VALUES ($1, $2, $3, 'd', 'generic', $4, decode(repeat('00', 32), 'hex'), $5)`, e.device, e.org, e.fleet, arch, r1)
	// The device ran release 3 once (moved from the other fleet): its
	// images are another fleet's and give it nothing.
	exec(`UPDATE devices SET previous_release_id = $2 WHERE id = $1`, e.device, r3)

	// RetryAfter long enough that no ask in a test publishes again unless
	// the test shortens it.
	e.h = &deltas.Deltas{Pool: e.pool, Bus: e.bus, Blobs: e.blobs, Log: quiet, RetryAfter: time.Hour}
	return e
}

// startWorker runs a delta worker until the test ends.
func (e *env) startWorker(t *testing.T, maxRatio float64) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := delta.New(delta.Config{Pool: e.pool, Bus: e.bus.Bus, Registry: e.reg, Blobs: e.blobs, MaxRatio: maxRatio,
		TmpDir: t.TempDir(), Log: quiet})
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	})
}

// reply is one answer as the device receives it.
type reply struct {
	status int
	header http.Header
	body   []byte
	code   string // problem code
}

func (e *env) ask(t *testing.T, from, to string) reply {
	t.Helper()
	ctx := auth.WithPrincipal(context.Background(), &auth.Principal{Kind: auth.KindDevice, DeviceID: e.device, OrgID: e.org, FleetID: e.fleet})
	resp, err := e.h.DeviceDeltaGet(ctx, api.DeviceDeltaGetRequestObject{Params: api.DeviceDeltaGetParams{From: api.Digest(from), To: api.Digest(to)}})
	if err != nil {
		var pe *problem.Error
		switch {
		case errors.As(err, &pe):
			return reply{status: pe.Status, code: pe.Code, body: []byte(pe.Detail)}
		case errors.Is(err, problem.ErrNotFound):
			return reply{status: http.StatusNotFound, code: "not_found"}
		}
		t.Fatalf("ask %s → %s: %v", from, to, err)
	}
	rec := httptest.NewRecorder()
	if err := resp.VisitDeviceDeltaGetResponse(rec); err != nil {
		t.Fatal(err)
	}
	return reply{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

// waitReady asks until the delta is served.
func (e *env) waitReady(t *testing.T, from, to string) reply {
	t.Helper()
	var r reply
	testutil.Eventually(t, "delta to be served", func() error {
		r = e.ask(t, from, to)
		if r.status != http.StatusOK {
			return fmt.Errorf("status %d %s %s", r.status, r.code, r.body)
		}
		return nil
	})
	return r
}

func TestDeltaServedOnceComputed(t *testing.T) {
	e := setup(t)
	r := e.ask(t, e.a, e.b)
	if r.status != http.StatusAccepted || r.header.Get("Retry-After") != "3600" {
		t.Fatalf("first ask: %d, Retry-After %q", r.status, r.header.Get("Retry-After"))
	}
	var d api.ImageDelta
	if err := json.Unmarshal(r.body, &d); err != nil || d.State != api.ImageDeltaStatePending ||
		string(d.From) != e.a || string(d.To) != e.b || string(d.Architecture) != imagedeltatest.Arch {
		t.Fatalf("202 body %s (%v)", r.body, err)
	}
	if n := e.bus.n.Load(); n != 1 {
		t.Fatalf("%d requests published, want 1", n)
	}
	// Asked again at once: no second request.
	if r := e.ask(t, e.a, e.b); r.status != http.StatusAccepted || e.bus.n.Load() != 1 {
		t.Fatalf("second ask: %d, %d requests", r.status, e.bus.n.Load())
	}

	e.startWorker(t, 0)
	r = e.waitReady(t, e.a, e.b)
	if r.header.Get("Content-Type") != imagedelta.MediaType || r.header.Get("Content-Length") != strconv.Itoa(len(r.body)) {
		t.Fatalf("headers %v for %d bytes", r.header, len(r.body))
	}
	layers, err := strconv.ParseInt(r.header.Get("Flock-Delta-Layers-Size"), 10, 64)
	if err != nil || layers <= int64(len(r.body)) {
		t.Fatalf("Flock-Delta-Layers-Size %q for a delta of %d bytes", r.header.Get("Flock-Delta-Layers-Size"), len(r.body))
	}
	t.Logf("delta %d bytes, layers %d bytes", len(r.body), layers)

	// The device rebuilds B's layers from A's.
	aRaw, bRaw := imagedeltatest.Uncompressed(t, e.pair.A), imagedeltatest.Uncompressed(t, e.pair.B)
	var got [][]byte
	_, err = imagedelta.Apply(context.Background(), bytes.NewReader(r.body), func(id string) (layerdelta.Layer, bool) {
		for _, l := range aRaw {
			if fmt.Sprintf("sha256:%x", sha256.Sum256(l)) == id {
				return layerdelta.Layer{R: bytes.NewReader(l), Size: int64(len(l))}, true
			}
		}
		return layerdelta.Layer{}, false
	}, func(imagedelta.IndexEntry) (io.WriteCloser, error) {
		got = append(got, nil)
		return &sink{to: &got[len(got)-1]}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range bRaw {
		if !bytes.Equal(got[i], bRaw[i]) {
			t.Fatalf("layer %d differs", i)
		}
	}

	// The object is gone from the store: computed anew.
	row := e.row(t, e.a, e.b)
	if err := e.blobs.Delete(context.Background(), *row.BlobKey); err != nil {
		t.Fatal(err)
	}
	if r := e.ask(t, e.a, e.b); r.status != http.StatusAccepted {
		t.Fatalf("ask after the object went: %d %s", r.status, r.body)
	}
	e.waitReady(t, e.a, e.b)
}

type sink struct {
	bytes.Buffer
	to *[]byte
}

func (s *sink) Close() error { *s.to = s.Bytes(); return nil }

func (e *env) row(t *testing.T, from, to string) db.ImageDelta {
	t.Helper()
	d, err := db.New(e.pool).DeltaGetByPair(context.Background(), db.DeltaGetByPairParams{OrgID: e.org, FromDigest: from, ToDigest: to, Architecture: imagedeltatest.Arch})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestOnlyTheDevicesImages(t *testing.T) {
	e := setup(t)
	missing := "sha256:" + strings.Repeat("0f", 32)
	for _, c := range []struct {
		name, from, to string
		status         int
		code           string
	}{
		{"target as source", e.b, e.b, http.StatusBadRequest, "validation_failed"},
		{"from is the target's", e.b, e.a, http.StatusNotFound, "image_not_found"},
		{"to is the running one's", e.a, e.a, http.StatusBadRequest, "validation_failed"},
		{"unknown to", e.a, missing, http.StatusNotFound, "image_not_found"},
		{"unknown from", missing, e.b, http.StatusNotFound, "image_not_found"},
		{"another fleet's release", e.other, e.b, http.StatusNotFound, "image_not_found"},
		{"malformed from", "sha256:xyz", e.b, http.StatusBadRequest, "validation_failed"},
		{"uppercase to", e.a, strings.ToUpper(e.b), http.StatusBadRequest, "validation_failed"},
	} {
		r := e.ask(t, c.from, c.to)
		if r.status != c.status || r.code != c.code {
			t.Errorf("%s: %d %s (%s), want %d %s", c.name, r.status, r.code, r.body, c.status, c.code)
		}
	}
	if n := e.bus.n.Load(); n != 0 {
		t.Fatalf("%d requests published for refused asks", n)
	}
	// A device of another organisation asking for these digests finds
	// nothing either.
	otherDevice := uuid.New()
	var org2, fleet2 uuid.UUID
	ctx := context.Background()
	e.pool.QueryRow(ctx, `INSERT INTO orgs (name) VALUES ('globex') RETURNING id`).Scan(&org2)
	e.pool.QueryRow(ctx, `INSERT INTO fleets (org_id, name, architecture) VALUES ($1, 'f', 'amd64') RETURNING id`, org2).Scan(&fleet2)
	if _, err := e.pool.Exec(ctx, `INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key)
		VALUES ($1, $2, $3, 'd', 'generic', 'amd64', decode(repeat('00', 32), 'hex'))`, otherDevice, org2, fleet2); err != nil {
		t.Fatal(err)
	}
	e.device = otherDevice
	if r := e.ask(t, e.a, e.b); r.status != http.StatusNotFound || r.code != "image_not_found" {
		t.Fatalf("another organisation's device: %d %s", r.status, r.code)
	}
}

func TestNotSmallerAndFailed(t *testing.T) {
	e := setup(t)
	e.startWorker(t, 0.01)
	for _, to := range []string{e.b, e.junk} {
		if r := e.ask(t, e.a, to); r.status != http.StatusAccepted {
			t.Fatalf("first ask: %d", r.status)
		}
	}
	var r reply
	testutil.Eventually(t, "409 delta_not_smaller", func() error {
		if r = e.ask(t, e.a, e.b); r.status != http.StatusConflict {
			return fmt.Errorf("%d", r.status)
		}
		return nil
	})
	if r.code != "delta_not_smaller" || !strings.Contains(string(r.body), "pull the layers") {
		t.Fatalf("%s: %s", r.code, r.body)
	}
	testutil.Eventually(t, "409 delta_failed", func() error {
		if r = e.ask(t, e.a, e.junk); r.status != http.StatusConflict {
			return fmt.Errorf("%d", r.status)
		}
		return nil
	})
	if r.code != "delta_failed" || !strings.Contains(string(r.body), "tar") {
		t.Fatalf("%s: %s", r.code, r.body)
	}
}

// TestLostRequestsPublishedAgain: with no worker, a pending delta's request
// goes out again once RetryAfter passed, and a computing delta's once its
// lease ran out.
func TestLostRequestsPublishedAgain(t *testing.T) {
	e := setup(t)
	e.h.RetryAfter = 200 * time.Millisecond
	e.ask(t, e.a, e.b)
	testutil.Eventually(t, "pending request published again", func() error {
		if r := e.ask(t, e.a, e.b); r.status != http.StatusAccepted {
			t.Fatalf("%d", r.status)
		}
		if n := e.bus.n.Load(); n < 2 {
			return fmt.Errorf("%d requests", n)
		}
		return nil
	})
	// A worker took it and died.
	row := e.row(t, e.a, e.b)
	dead := "dead"
	if _, err := db.New(e.pool).DeltaClaim(context.Background(), db.DeltaClaimParams{ID: row.ID, Holder: &dead, LeaseSeconds: 1}); err != nil {
		t.Fatal(err)
	}
	before := e.bus.n.Load()
	r := e.ask(t, e.a, e.b)
	var d api.ImageDelta
	json.Unmarshal(r.body, &d)
	if r.status != http.StatusAccepted || d.State != api.ImageDeltaStateComputing || e.bus.n.Load() != before {
		t.Fatalf("under a live lease: %d %s, %d requests (were %d)", r.status, r.body, e.bus.n.Load(), before)
	}
	testutil.Eventually(t, "expired lease's request published again", func() error {
		e.ask(t, e.a, e.b)
		if n := e.bus.n.Load(); n == before {
			return errors.New("not yet")
		}
		return nil
	})
	// And a worker now computes it.
	e.startWorker(t, 0)
	e.waitReady(t, e.a, e.b)
	if got := e.row(t, e.a, e.b); got.Attempts != 2 {
		t.Fatalf("attempts %d", got.Attempts)
	}
}
