package imagedelta_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/flock-io/flock-api/internal/imagedelta"
	"github.com/flock-io/flock-api/internal/imagedelta/imagedeltatest"
	"github.com/flock-io/flock-api/internal/layerdelta"
)

// fixture is one computed delta of a real image pair.
type fixture struct {
	pair  imagedeltatest.Pair
	delta []byte
	stats imagedelta.Stats
	aRaw  [][]byte // A's layers, uncompressed
	bRaw  [][]byte // B's layers, uncompressed
}

var (
	shared     fixture
	sharedOnce sync.Once
	sharedOK   bool
)

// compute returns the delta of the compiled-program pair, computed once per
// test binary (the tests only read it): under -race each computation and
// application takes seconds.
func compute(t *testing.T) fixture {
	t.Helper()
	sharedOnce.Do(func() {
		shared = computeNew(t)
		sharedOK = true
	})
	if !sharedOK {
		t.Fatal("the shared fixture failed in an earlier test")
	}
	return shared
}

func computeNew(t *testing.T) fixture {
	t.Helper()
	p := imagedeltatest.BuildPair(t)
	from := imagedeltatest.Resolved(t, "acme/sensors/hello", p.A)
	to := imagedeltatest.Resolved(t, "acme/sensors/hello", p.B)
	var buf bytes.Buffer
	st, err := imagedelta.Compute(context.Background(), from, to, imagedeltatest.Opener(t, p.A, p.B), &buf, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return fixture{pair: p, delta: buf.Bytes(), stats: st,
		aRaw: imagedeltatest.Uncompressed(t, p.A), bRaw: imagedeltatest.Uncompressed(t, p.B)}
}

func (f fixture) have(diffID string) (layerdelta.Layer, bool) {
	for _, b := range f.aRaw {
		if fmt.Sprintf("sha256:%x", sha256.Sum256(b)) == diffID {
			return layerdelta.Layer{R: bytes.NewReader(b), Size: int64(len(b))}, true
		}
	}
	return layerdelta.Layer{}, false
}

// collector keeps what Apply wrote per layer, and whether Apply closed it
// (only a verified layer is closed).
type collector struct {
	bufs   []*closeBuf
	failed int
}

type closeBuf struct {
	bytes.Buffer
	closed bool
	err    error
}

func (c *closeBuf) Close() error                   { c.closed = true; return nil }
func (c *closeBuf) CloseWithError(err error) error { c.err = err; return nil }

func (c *collector) out(e imagedelta.IndexEntry) (io.WriteCloser, error) {
	b := &closeBuf{}
	c.bufs = append(c.bufs, b)
	return b, nil
}

func TestComputeApplyRealImages(t *testing.T) {
	f := compute(t)
	st := f.stats
	t.Logf("layers %d (present %d, patched %d): delta %d B vs layers %d B (%.1f%%), A uncompressed %d B",
		st.Layers, st.Present, st.Patched, st.DeltaSize, st.LayersSize, 100*float64(st.DeltaSize)/float64(st.LayersSize), st.BaseSize)
	if st.Layers != 3 || st.Present != 1 || st.Patched != 2 {
		t.Fatalf("stats %+v: want 3 layers, 1 present, 2 patched", st)
	}
	if st.DeltaSize != int64(len(f.delta)) {
		t.Fatalf("DeltaSize %d, wrote %d", st.DeltaSize, len(f.delta))
	}
	if st.DeltaSize >= st.LayersSize*8/10 {
		t.Fatalf("delta of %d bytes is not much smaller than the %d bytes of layers it replaces", st.DeltaSize, st.LayersSize)
	}

	idx, err := imagedelta.ReadIndex(bytes.NewReader(f.delta))
	if err != nil {
		t.Fatal(err)
	}
	bd, _ := f.pair.B.Digest()
	if idx.To.Manifest != bd.String() || len(idx.Base) != 2 || !idx.Layers[0].Present || idx.Layers[1].Present {
		t.Fatalf("index %+v", idx)
	}

	var c collector
	if _, err := imagedelta.Apply(context.Background(), bytes.NewReader(f.delta), f.have, c.out); err != nil {
		t.Fatal(err)
	}
	if len(c.bufs) != len(f.bRaw) {
		t.Fatalf("%d layers written, want %d", len(c.bufs), len(f.bRaw))
	}
	ls, _ := f.pair.B.Layers()
	for i, b := range c.bufs {
		if !b.closed || !bytes.Equal(b.Bytes(), f.bRaw[i]) {
			t.Fatalf("layer %d: closed %v, %d bytes, identical %v", i, b.closed, b.Len(), bytes.Equal(b.Bytes(), f.bRaw[i]))
		}
		want, _ := ls[i].DiffID()
		if got := fmt.Sprintf("sha256:%x", sha256.Sum256(b.Bytes())); got != want.String() {
			t.Fatalf("layer %d: diffID %s, want %s", i, got, want)
		}
	}

	// Skipping layers: only the patched ones asked for.
	n := 0
	_, err = imagedelta.Apply(context.Background(), bytes.NewReader(f.delta), f.have, func(e imagedelta.IndexEntry) (io.WriteCloser, error) {
		if e.Present {
			return nil, nil
		}
		n++
		return &closeBuf{}, nil
	})
	if err != nil || n != 2 {
		t.Fatalf("skipping present layers: %d written, %v", n, err)
	}
}

func TestComputeIsDeterministic(t *testing.T) {
	f := compute(t)
	t.Parallel()
	from := imagedeltatest.Resolved(t, "acme/sensors/hello", f.pair.A)
	to := imagedeltatest.Resolved(t, "acme/sensors/hello", f.pair.B)
	var again bytes.Buffer
	if _, err := imagedelta.Compute(context.Background(), from, to, imagedeltatest.Opener(t, f.pair.A, f.pair.B), &again, t.TempDir(), nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Bytes(), f.delta) {
		t.Fatal("two computations of one delta differ")
	}
}

// applyChecked applies a damaged delta and fails t when Apply returns no
// error yet some layer differs from B's, or when it closed (declared good)
// a layer that differs.
func applyChecked(t *testing.T, f fixture, delta []byte) error {
	t.Helper()
	var c collector
	_, err := imagedelta.Apply(context.Background(), bytes.NewReader(delta), f.have, c.out)
	for i, b := range c.bufs {
		if b.closed && !bytes.Equal(b.Bytes(), f.bRaw[i]) {
			t.Fatalf("layer %d was closed as good but differs from B's", i)
		}
	}
	if err == nil {
		if len(c.bufs) != len(f.bRaw) {
			t.Fatalf("no error, but %d layers written", len(c.bufs))
		}
		return nil
	}
	for _, s := range []error{imagedelta.ErrCorrupt, imagedelta.ErrTruncated, imagedelta.ErrMismatch, imagedelta.ErrVersion, imagedelta.ErrMissingBase} {
		if errors.Is(err, s) {
			return err
		}
	}
	t.Fatalf("error wraps no sentinel: %v", err)
	return err
}

func TestTruncatedDeltaRefused(t *testing.T) {
	f := compute(t)
	idx, err := imagedelta.ReadIndex(bytes.NewReader(f.delta))
	if err != nil {
		t.Fatal(err)
	}
	// Every cut before the last patch's last byte must fail: the content
	// ends there (only padding and the end-of-archive blocks follow).
	end := len(f.delta) - 1024
	for len(f.delta) > 0 && end > 0 && f.delta[end-1] == 0 {
		end--
	}
	_ = idx
	rng := rand.New(rand.NewPCG(1, 2))
	cuts := []int{0, 1, 511, 512, 1024, end - 1, end - 100}
	for range 40 {
		cuts = append(cuts, rng.IntN(end))
	}
	for _, n := range cuts {
		err := applyChecked(t, f, f.delta[:n])
		if err == nil {
			t.Fatalf("delta cut to %d of %d bytes was accepted", n, len(f.delta))
		}
	}
}

func TestCorruptDeltaRefused(t *testing.T) {
	f := compute(t)
	rng := rand.New(rand.NewPCG(3, 4))
	refused := 0
	const flips = 100
	for i := range flips {
		d := bytes.Clone(f.delta)
		pos := rng.IntN(len(d))
		if i < 20 { // the index's JSON, at its start
			pos = 512 + rng.IntN(200)
		}
		d[pos] ^= 1 << rng.IntN(8)
		if applyChecked(t, f, d) != nil {
			refused++
		}
	}
	// Bits in tar padding and in the index's informational fields may
	// flip harmlessly; the layers were still right (applyChecked).
	t.Logf("%d of %d bit flips refused, the rest harmless", refused, flips)
	if refused < flips/2 {
		t.Fatalf("only %d of %d bit flips refused", refused, flips)
	}
}

func TestPatchForAnotherLayerRefused(t *testing.T) {
	f := compute(t)
	idx, err := imagedelta.ReadIndex(bytes.NewReader(f.delta))
	if err != nil {
		t.Fatal(err)
	}
	// Rename the index's diffIDs of the two patched layers into each other:
	// each patch is whole and valid, but rebuilds the other layer.
	a, b := idx.Layers[1].DiffID, idx.Layers[2].DiffID
	d := bytes.Replace(f.delta, []byte(a), []byte("X"+b[1:]), 1)
	d = bytes.Replace(d, []byte(b), []byte(a), 1)
	d = bytes.Replace(d, []byte("X"+b[1:]), []byte(b), 1)
	err = applyChecked(t, f, d)
	if !errors.Is(err, imagedelta.ErrMismatch) {
		t.Fatalf("err %v, want ErrMismatch", err)
	}
}

func TestMissingBaseRefused(t *testing.T) {
	f := compute(t)
	var c collector
	_, err := imagedelta.Apply(context.Background(), bytes.NewReader(f.delta),
		func(string) (layerdelta.Layer, bool) { return layerdelta.Layer{}, false }, c.out)
	if !errors.Is(err, imagedelta.ErrMissingBase) {
		t.Fatalf("err %v, want ErrMissingBase", err)
	}
	// A base of the right diffID but other bytes.
	_, err = imagedelta.Apply(context.Background(), bytes.NewReader(f.delta), func(id string) (layerdelta.Layer, bool) {
		l, ok := f.have(id)
		if !ok {
			return l, false
		}
		b := make([]byte, l.Size)
		l.R.ReadAt(b, 0)
		b[len(b)/2] ^= 0x40
		return layerdelta.Layer{R: bytes.NewReader(b), Size: l.Size}, true
	}, c.out)
	if err == nil {
		t.Fatal("a base layer of other content was accepted")
	}
}

func TestNotATarLayer(t *testing.T) {
	p := imagedeltatest.BuildPair(t)
	junk := imagedeltatest.RawLayer(t, bytes.Repeat([]byte("not a tar at all, "), 1000))
	b := imagedeltatest.Image(t, junk)
	from := imagedeltatest.Resolved(t, "r", p.A)
	to := imagedeltatest.Resolved(t, "r", b)
	_, err := imagedelta.Compute(context.Background(), from, to, imagedeltatest.Opener(t, p.A, b), io.Discard, t.TempDir(), nil)
	if !errors.Is(err, imagedelta.ErrNotTar) {
		t.Fatalf("err %v, want ErrNotTar", err)
	}
}

func TestComputeCancelled(t *testing.T) {
	p := imagedeltatest.BuildPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	tmp := t.TempDir()
	_, err := imagedelta.Compute(ctx, imagedeltatest.Resolved(t, "r", p.A), imagedeltatest.Resolved(t, "r", p.B),
		imagedeltatest.Opener(t, p.A, p.B), io.Discard, tmp, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if left, _ := filepathGlob(tmp); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

func TestWrongVersionRefused(t *testing.T) {
	f := compute(t)
	d := bytes.Replace(f.delta, []byte(`"version": 1`), []byte(`"version": 7`), 1)
	// The tar header's checksum does not cover the content: only the
	// index check can refuse it.
	if err := applyChecked(t, f, d); !errors.Is(err, imagedelta.ErrVersion) {
		t.Fatalf("err %v, want ErrVersion", err)
	}
	if strings.Count(string(f.delta[:2048]), `"version": 1`) != 1 {
		t.Fatal("fixture: version field not found once")
	}
}
