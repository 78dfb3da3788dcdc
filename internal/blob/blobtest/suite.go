// Package blobtest is the conformance suite every blob.Store configuration
// passes: the embedded gofakes3 store and an external S3-compatible one.
package blobtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/flock-io/flock-api/internal/blob"
)

// Large is the size of the object the suite streams through Put and Get:
// several multipart parts at the smallest part size.
const Large = 3*(5<<20) + 12345

// Run runs the suite against the store open returns; each subtest gets its
// own store from open.
func Run(t *testing.T, open func(t *testing.T) *blob.Store) {
	t.Run("RoundTrip", func(t *testing.T) {
		s := open(t)
		ctx := context.Background()
		want := []byte("hello, delta")
		if err := s.Put(ctx, "a/b/c.bin", bytes.NewReader(want), int64(len(want))); err != nil {
			t.Fatal(err)
		}
		got, size := get(t, s, "a/b/c.bin")
		if !bytes.Equal(got, want) || size != int64(len(want)) {
			t.Fatalf("got %q (size %d), want %q", got, size, want)
		}
		info, err := s.Stat(ctx, "a/b/c.bin")
		if err != nil || info.Size != int64(len(want)) {
			t.Fatalf("stat: %+v, %v", info, err)
		}
		// Overwrite.
		if err := s.Put(ctx, "a/b/c.bin", strings.NewReader("v2"), 2); err != nil {
			t.Fatal(err)
		}
		if got, _ := get(t, s, "a/b/c.bin"); string(got) != "v2" {
			t.Fatalf("after overwrite: %q", got)
		}
		// Empty object.
		if err := s.Put(ctx, "empty", bytes.NewReader(nil), 0); err != nil {
			t.Fatal(err)
		}
		if got, size := get(t, s, "empty"); len(got) != 0 || size != 0 {
			t.Fatalf("empty object: %d bytes, size %d", len(got), size)
		}
		if err := s.Delete(ctx, "a/b/c.bin"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.Get(ctx, "a/b/c.bin"); !errors.Is(err, blob.ErrNotFound) {
			t.Fatalf("get after delete: %v, want ErrNotFound", err)
		}
	})

	t.Run("NotFound", func(t *testing.T) {
		s := open(t)
		ctx := context.Background()
		if _, _, err := s.Get(ctx, "nope"); !errors.Is(err, blob.ErrNotFound) {
			t.Fatalf("get: %v, want ErrNotFound", err)
		}
		if _, err := s.Stat(ctx, "nope"); !errors.Is(err, blob.ErrNotFound) {
			t.Fatalf("stat: %v, want ErrNotFound", err)
		}
		if err := s.Delete(ctx, "nope"); err != nil {
			t.Fatalf("delete of a missing key: %v", err)
		}
	})

	t.Run("WrongSize", func(t *testing.T) {
		s := open(t)
		ctx := context.Background()
		if err := s.Put(ctx, "short", strings.NewReader("abc"), 10); err == nil {
			t.Fatal("put of 3 bytes announced as 10 succeeded")
		}
		if err := s.Put(ctx, "long", strings.NewReader("abcdefghij"), 3); err == nil {
			t.Fatal("put of 10 bytes announced as 3 succeeded")
		}
		for _, k := range []string{"short", "long"} {
			if _, err := s.Stat(ctx, k); !errors.Is(err, blob.ErrNotFound) {
				t.Fatalf("%s: stat after a failed put: %v, want ErrNotFound", k, err)
			}
		}
	})

	for _, c := range []struct {
		name string
		size int64 // passed to Put
	}{{"LargeKnownSize", Large}, {"LargeUnknownSize", -1}} {
		t.Run(c.name, func(t *testing.T) {
			s := open(t)
			ctx := context.Background()
			src := newPattern(Large)
			if err := s.Put(ctx, "large", src, c.size); err != nil {
				t.Fatal(err)
			}
			body, size, err := s.Get(ctx, "large")
			if err != nil {
				t.Fatal(err)
			}
			defer body.Close()
			if size != Large {
				t.Fatalf("size %d, want %d", size, Large)
			}
			h := sha256.New()
			n, err := io.Copy(h, body)
			if err != nil || n != Large {
				t.Fatalf("read %d bytes: %v", n, err)
			}
			if !bytes.Equal(h.Sum(nil), newPattern(Large).sum()) {
				t.Fatal("content differs")
			}
		})
	}
}

func get(t *testing.T, s *blob.Store, key string) ([]byte, int64) {
	t.Helper()
	body, size, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer body.Close()
	b, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	return b, size
}

// pattern yields n pseudo-random bytes without holding them; not a Seeker,
// so Put cannot rewind it.
type pattern struct {
	rng  *rand.ChaCha8
	left int64
	n    int64
}

func newPattern(n int64) *pattern {
	return &pattern{rng: rand.NewChaCha8([32]byte{1, 4}), left: n, n: n}
}

func (p *pattern) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > p.left {
		b = b[:p.left]
	}
	n, _ := p.rng.Read(b)
	p.left -= int64(n)
	return n, nil
}

func (p *pattern) sum() []byte {
	h := sha256.New()
	io.Copy(h, p)
	return h.Sum(nil)
}
