package blob_test

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"testing"

	"github.com/flock-io/flock-api/internal/blob"
	"github.com/flock-io/flock-api/internal/blob/blobtest"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openEmbedded(t *testing.T, dir string) *blob.Store {
	t.Helper()
	s, err := blob.Open(context.Background(), blob.Config{DataDir: dir, PartSize: 5 << 20, Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestEmbedded(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) *blob.Store {
		s := openEmbedded(t, t.TempDir())
		if !s.Embedded() {
			t.Fatal("not embedded")
		}
		return s
	})
}

// TestExternal drives the external configuration (endpoint, credentials,
// bucket creation) against an embedded store's listener.
func TestExternal(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) *blob.Store {
		server := openEmbedded(t, t.TempDir())
		s, err := blob.Open(context.Background(), blob.Config{Endpoint: server.Endpoint(), Bucket: "other",
			AccessKey: "k", SecretKey: "s", PartSize: 5 << 20, Log: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		if s.Embedded() || s.Bucket() != "other" {
			t.Fatalf("embedded %v, bucket %s", s.Embedded(), s.Bucket())
		}
		return s
	})
}

func TestRestartKeepsObjects(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	s := openEmbedded(t, dir)
	if err := s.Put(ctx, "deltas/x", strings.NewReader("kept"), 4); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s2 := openEmbedded(t, dir)
	body, size, err := s2.Get(ctx, "deltas/x")
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	b, _ := io.ReadAll(body)
	if string(b) != "kept" || size != 4 {
		t.Fatalf("after restart: %q (size %d)", b, size)
	}
}

func TestOpenNeedsDataDir(t *testing.T) {
	_, err := blob.Open(context.Background(), blob.Config{})
	if err == nil || !strings.Contains(err.Error(), "FLOCK_S3_ENDPOINT") {
		t.Fatalf("err %v, want one naming FLOCK_S3_ENDPOINT", err)
	}
}

func TestUnreachableEndpointNamesSetting(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	_, err := blob.Open(ctx, blob.Config{Endpoint: "http://127.0.0.1:1", AccessKey: "k", SecretKey: "s", Log: quiet()})
	if err == nil || !strings.Contains(err.Error(), "FLOCK_S3_ENDPOINT") {
		t.Fatalf("err %v, want one naming FLOCK_S3_ENDPOINT", err)
	}
}

// TestPutStreams: a large object of known size goes through without the
// store holding it (the heap grows by far less than the object).
func TestPutStreams(t *testing.T) {
	s := openEmbedded(t, t.TempDir())
	const size = 64 << 20
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	peak := &peakReader{r: io.LimitReader(zeros{}, size)}
	if err := s.Put(context.Background(), "big", peak, size); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if peak.maxHeap-before.HeapAlloc > size/4 {
		t.Fatalf("heap grew by %d MiB while putting %d MiB", (peak.maxHeap-before.HeapAlloc)>>20, size>>20)
	}
	info, err := s.Stat(context.Background(), "big")
	if err != nil || info.Size != size {
		t.Fatalf("stat %+v %v", info, err)
	}
}

const testTimeout = 20e9

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// peakReader samples the heap every 4 MiB read.
type peakReader struct {
	r       io.Reader
	n, next int64
	maxHeap uint64
}

func (p *peakReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if p.n >= p.next {
		p.next += 4 << 20
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		p.maxHeap = max(p.maxHeap, m.HeapAlloc)
	}
	return n, err
}
