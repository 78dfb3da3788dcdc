package registryproxy

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func blob(t *testing.T, n int) ([]byte, string) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	sum := sha256.Sum256(b)
	return b, hex.EncodeToString(sum[:])
}

func newCache(t *testing.T, dir string, max int64) *blobCache {
	t.Helper()
	c, err := openBlobCache(dir, max, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// errReader fails after its bytes.
type errReader struct{ r io.Reader }

func (e errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		err = errors.New("connection reset")
	}
	return n, err
}

func TestBlobCacheFill(t *testing.T) {
	data, digest := blob(t, 64<<10)
	other, _ := blob(t, 64<<10)
	tests := []struct {
		name     string
		src      []byte // what the registry sends
		breaks   bool   // and then the connection breaks
		size     int64  // its Content-Length
		readUpTo int    // bytes the client reads before the body is closed; -1 all
		max      int64
		kept     bool
	}{
		{"whole and true", data, false, int64(len(data)), -1, 1 << 20, true},
		{"other bytes under the digest", other, false, int64(len(data)), -1, 1 << 20, false},
		{"shorter than announced", data[:1000], false, int64(len(data)), -1, 1 << 20, false},
		{"longer than announced", append(data[:len(data):len(data)], 'x'), false, int64(len(data)), -1, 1 << 20, false},
		{"the registry's connection breaks", data[:1000], true, int64(len(data)), -1, 1 << 20, false},
		{"the client goes away", data, false, int64(len(data)), 1000, 1 << 20, false},
		{"size unknown", data, false, -1, -1, 1 << 20, false},
		{"over a quarter of the cache", data, false, int64(len(data)), -1, int64(len(data))*4 - 1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(t, t.TempDir(), tt.max)
			var src io.Reader = bytes.NewReader(tt.src)
			if tt.breaks {
				src = errReader{src}
			}
			body := c.fill(digest, tt.size, io.NopCloser(src))
			want := tt.src
			var got []byte
			var err error
			if tt.readUpTo < 0 {
				got, err = io.ReadAll(body)
			} else {
				got = make([]byte, tt.readUpTo)
				_, err = io.ReadFull(body, got)
				want = want[:tt.readUpTo]
			}
			body.Close()
			// The client gets what the registry sent, kept or not.
			if !bytes.Equal(got, want) || (err != nil) != tt.breaks {
				t.Errorf("the client read %d bytes (%v), want %d", len(got), err, len(want))
			}
			f, size, ok := c.open(digest)
			if ok != tt.kept {
				t.Fatalf("kept = %v, want %v", ok, tt.kept)
			}
			if ok {
				defer f.Close()
				b, _ := io.ReadAll(f)
				if size != int64(len(data)) || !bytes.Equal(b, data) {
					t.Errorf("cached %d bytes, not the blob", size)
				}
			}
			if left, _ := os.ReadDir(c.tmpDir()); len(left) != 0 {
				t.Errorf("temporary files left: %v", left)
			}
			if len(c.filling) != 0 {
				t.Errorf("still filling: %v", c.filling)
			}
		})
	}
}

func TestBlobCacheOneFillAtATime(t *testing.T) {
	data, digest := blob(t, 1000)
	c := newCache(t, t.TempDir(), 1<<20)
	first := c.fill(digest, 1000, io.NopCloser(bytes.NewReader(data)))
	if _, ok := first.(*filler); !ok {
		t.Fatal("the first pull does not fill")
	}
	second := io.NopCloser(bytes.NewReader(data))
	if c.fill(digest, 1000, second) != second {
		t.Error("a second pull fills the same blob meanwhile")
	}
	io.ReadAll(first)
	first.Close()
	if c.fill(digest, 1000, second) != second {
		t.Error("a kept blob is filled again")
	}
}

// TestBlobCacheEviction fills a cache of four blobs' room with five and
// reopens it.
func TestBlobCacheEviction(t *testing.T) {
	dir := t.TempDir()
	c := newCache(t, dir, 4*1000)
	var digests []string
	put := func() {
		data, d := blob(t, 1000)
		body := c.fill(d, 1000, io.NopCloser(bytes.NewReader(data)))
		io.ReadAll(body)
		body.Close()
		digests = append(digests, d)
	}
	has := func(c *blobCache, d string) bool {
		f, _, ok := c.open(d)
		if ok {
			f.Close()
		}
		return ok
	}
	for range 4 {
		put()
	}
	has(c, digests[0]) // used: now the second is the least recently used
	put()
	for i, want := range []bool{true, false, true, true, true} {
		if got := has(c, digests[i]); got != want {
			t.Errorf("blob %d cached = %v, want %v", i, got, want)
		}
	}
	if _, err := os.Stat(c.path(digests[1])); !os.IsNotExist(err) {
		t.Errorf("the evicted blob's file: %v", err)
	}
	if c.size != 4000 {
		t.Errorf("size = %d, want 4000", c.size)
	}

	// A restart keeps the blobs and drops what a dead fill left.
	os.WriteFile(filepath.Join(c.tmpDir(), digests[1]+"-123"), []byte("partial"), 0o600)
	c2 := newCache(t, dir, 4*1000)
	for i, want := range []bool{true, false, true, true, true} {
		if got := has(c2, digests[i]); got != want {
			t.Errorf("after a restart, blob %d cached = %v, want %v", i, got, want)
		}
	}
	if left, _ := os.ReadDir(c2.tmpDir()); len(left) != 0 {
		t.Errorf("temporary files left after a restart: %v", left)
	}
	// A blob removed behind the cache's back is forgotten and filled again.
	os.Remove(c2.path(digests[2]))
	if has(c2, digests[2]) {
		t.Error("a removed blob is served")
	}
	data, _ := blob(t, 1000)
	refill := c2.fill(digests[2], 1000, io.NopCloser(bytes.NewReader(data)))
	if _, ok := refill.(*filler); !ok {
		t.Error("a removed blob is not filled again")
	}
	refill.Close() // other bytes: not kept

	if c2.size != 3000 || len(c2.entries) != 3 {
		t.Errorf("after a blob was removed, the cache holds %d bytes in %d blobs", c2.size, len(c2.entries))
	}

	// A smaller cache after the restart sheds blobs to fit.
	c3 := newCache(t, dir, 2*1000)
	if c3.size != 2000 || len(c3.entries) != 2 {
		t.Errorf("a cache reopened smaller holds %d bytes in %d blobs", c3.size, len(c3.entries))
	}
}
