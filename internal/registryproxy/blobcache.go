package registryproxy

import (
	"cmp"
	"container/list"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// blobCache keeps layer blobs pulled through the proxy on the replica's
// disk and serves them again from there, with sendfile. A fleet pulls the
// same few layers thousands of times during a rollout; from the cache they
// cost neither the registry's bandwidth nor a second hop of copies.
//
// Blobs are content-addressed, so a cached copy cannot go stale, and a copy
// is kept only once its sha256 matched its digest. Whether the repository
// still holds the blob stays the registry's word: every pull served from the
// cache first asks the registry (a HEAD), so a blob deleted there, or never
// pushed to the caller's repository, is not served.
type blobCache struct {
	dir string // holds sha256/<hex> and tmp/
	max int64
	log *slog.Logger

	mu      sync.Mutex
	lru     *list.List               // of *cacheEntry, most recently used first
	entries map[string]*list.Element // by hex digest
	size    int64
	filling map[string]struct{}

	hits, misses, fills, evictions prometheus.Counter
	bytes                          prometheus.GaugeFunc
}

type cacheEntry struct {
	hex  string
	size int64
}

// openBlobCache opens (or creates) a cache under dir holding at most max
// bytes, taking in what an earlier run left there.
func openBlobCache(dir string, max int64, log *slog.Logger) (*blobCache, error) {
	c := &blobCache{dir: dir, max: max, log: log, lru: list.New(),
		entries: map[string]*list.Element{}, filling: map[string]struct{}{}}
	c.hits = prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_registry_proxy_cache_hits_total",
		Help: "Blob pulls the registry proxy served from its disk cache."})
	c.misses = prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_registry_proxy_cache_misses_total",
		Help: "Blob pulls the registry proxy forwarded to the registry."})
	c.fills = prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_registry_proxy_cache_fills_total",
		Help: "Blobs the registry proxy verified and kept in its disk cache."})
	c.evictions = prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_registry_proxy_cache_evictions_total",
		Help: "Blobs the registry proxy dropped from its disk cache to stay within its size."})
	c.bytes = prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flock_registry_proxy_cache_bytes",
		Help: "Bytes of blobs in the registry proxy's disk cache."}, func() float64 {
		c.mu.Lock()
		defer c.mu.Unlock()
		return float64(c.size)
	})
	// Partial fills of a process that died are garbage.
	if err := os.RemoveAll(c.tmpDir()); err != nil {
		return nil, fmt.Errorf("registry cache %s: %w", dir, err)
	}
	for _, d := range []string{c.tmpDir(), filepath.Join(dir, "sha256")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("registry cache %s: %w", dir, err)
		}
	}
	ents, err := os.ReadDir(filepath.Join(dir, "sha256"))
	if err != nil {
		return nil, fmt.Errorf("registry cache %s: %w", dir, err)
	}
	type found struct {
		cacheEntry
		mod int64
	}
	var old []found
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() || !validHex(e.Name()) {
			continue
		}
		old = append(old, found{cacheEntry{e.Name(), info.Size()}, info.ModTime().UnixNano()})
	}
	// Oldest last: the list's back is evicted first. Hits do not touch
	// files, so after a restart the order is the order of filling.
	slices.SortFunc(old, func(a, b found) int { return cmp.Compare(b.mod, a.mod) })
	for _, f := range old {
		ce := f.cacheEntry
		c.entries[ce.hex] = c.lru.PushBack(&ce)
		c.size += ce.size
	}
	c.mu.Lock()
	c.evictLocked("")
	c.mu.Unlock()
	return c, nil
}

func (c *blobCache) collectors() []prometheus.Collector {
	return []prometheus.Collector{c.hits, c.misses, c.fills, c.evictions, c.bytes}
}

func (c *blobCache) tmpDir() string               { return filepath.Join(c.dir, "tmp") }
func (c *blobCache) path(hexDigest string) string { return filepath.Join(c.dir, "sha256", hexDigest) }

func validHex(s string) bool {
	if len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// sha256Hex is the hex part of a sha256 digest, or "" for anything else.
func sha256Hex(digest string) string {
	h, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || !validHex(h) {
		return ""
	}
	return h
}

// open returns the cached blob, marking it used.
func (c *blobCache) open(hexDigest string) (*os.File, int64, bool) {
	c.mu.Lock()
	el, ok := c.entries[hexDigest]
	if ok {
		c.lru.MoveToFront(el)
	}
	c.mu.Unlock()
	if !ok {
		return nil, 0, false
	}
	f, err := os.Open(c.path(hexDigest))
	if err != nil {
		// Evicted meanwhile, or removed behind the cache's back: forget
		// it, so that the next pull fills it again.
		c.forget(el)
		return nil, 0, false
	}
	info, err := f.Stat()
	if err != nil || info.Size() != el.Value.(*cacheEntry).size {
		f.Close()
		c.forget(el)
		return nil, 0, false
	}
	return f, info.Size(), true
}

// forget drops el from the index if it is still there.
func (c *blobCache) forget(el *list.Element) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ce := el.Value.(*cacheEntry)
	if c.entries[ce.hex] == el {
		c.lru.Remove(el)
		delete(c.entries, ce.hex)
		c.size -= ce.size
	}
}

// evictLocked drops the least recently used blobs until the cache fits,
// sparing keep.
func (c *blobCache) evictLocked(keep string) {
	for c.size > c.max {
		el := c.lru.Back()
		if el == nil {
			return
		}
		ce := el.Value.(*cacheEntry)
		if ce.hex == keep {
			if el = el.Prev(); el == nil {
				return
			}
			ce = el.Value.(*cacheEntry)
		}
		c.lru.Remove(el)
		delete(c.entries, ce.hex)
		c.size -= ce.size
		// A reader that has the file open keeps reading it.
		if err := os.Remove(c.path(ce.hex)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("registry cache: evict", "digest", "sha256:"+ce.hex, "error", err.Error())
		}
		c.evictions.Inc()
	}
}

// fill wraps an upstream response body so that what the client reads is
// also written to the cache, or returns body as it is when the blob is
// cached already, being filled by another pull, unknown in size or too
// large to keep (over a quarter of the cache).
func (c *blobCache) fill(hexDigest string, size int64, body io.ReadCloser) io.ReadCloser {
	if size <= 0 || size > c.max/4 {
		return body
	}
	c.mu.Lock()
	_, cached := c.entries[hexDigest]
	_, busy := c.filling[hexDigest]
	if !cached && !busy {
		c.filling[hexDigest] = struct{}{}
	}
	c.mu.Unlock()
	if cached || busy {
		return body
	}
	f, err := os.CreateTemp(c.tmpDir(), hexDigest+"-*")
	if err != nil {
		c.log.Warn("registry cache: fill", "digest", "sha256:"+hexDigest, "error", err.Error())
		c.done(hexDigest)
		return body
	}
	return &filler{c: c, hex: hexDigest, size: size, body: body, f: f, h: sha256.New()}
}

func (c *blobCache) done(hexDigest string) {
	c.mu.Lock()
	delete(c.filling, hexDigest)
	c.mu.Unlock()
}

// filler tees a blob's body into a temporary file and keeps the file once
// the whole blob has been read and its digest verified.
type filler struct {
	c    *blobCache
	hex  string
	size int64
	body io.ReadCloser
	f    *os.File
	h    hash.Hash
	n    int64
	bad  bool // a write failed or the body ended early: keep nothing
	end  bool
}

func (fl *filler) Read(p []byte) (int, error) {
	n, err := fl.body.Read(p)
	if n > 0 && !fl.bad {
		fl.h.Write(p[:n])
		if _, werr := fl.f.Write(p[:n]); werr != nil {
			fl.c.log.Warn("registry cache: write", "digest", "sha256:"+fl.hex, "error", werr.Error())
			fl.bad = true
		}
		fl.n += int64(n)
	}
	if err == io.EOF {
		fl.end = true
	} else if err != nil {
		fl.bad = true
	}
	return n, err
}

// Close keeps the blob if it arrived whole and true, and drops it
// otherwise; the client's answer does not depend on either.
func (fl *filler) Close() error {
	err := fl.body.Close()
	defer fl.c.done(fl.hex)
	name := fl.f.Name()
	cerr := fl.f.Close()
	if fl.bad || !fl.end || fl.n != fl.size || cerr != nil {
		os.Remove(name)
		return err
	}
	if got := hex.EncodeToString(fl.h.Sum(nil)); got != fl.hex {
		fl.c.log.Error("registry cache: the registry sent a blob whose digest differs", "digest", "sha256:"+fl.hex, "got", "sha256:"+got)
		os.Remove(name)
		return err
	}
	c := fl.c
	if rerr := os.Rename(name, c.path(fl.hex)); rerr != nil {
		c.log.Warn("registry cache: keep", "digest", "sha256:"+fl.hex, "error", rerr.Error())
		os.Remove(name)
		return err
	}
	c.mu.Lock()
	ce := &cacheEntry{fl.hex, fl.size}
	c.entries[fl.hex] = c.lru.PushFront(ce)
	c.size += fl.size
	c.evictLocked(fl.hex)
	c.mu.Unlock()
	c.fills.Inc()
	return err
}

// serveCached answers a blob GET or HEAD from the cache if the blob is
// there and the registry says the repository holds it; false leaves the
// request to be forwarded.
func (p *Proxy) serveCached(w http.ResponseWriter, r *http.Request, repo, digest string) bool {
	h := sha256Hex(digest)
	if h == "" {
		return false
	}
	f, size, ok := p.cache.open(h)
	if !ok {
		p.cache.misses.Inc()
		return false
	}
	defer f.Close()
	u := *p.base
	u.Path = "/v2/" + repo + "/blobs/" + digest
	req, err := http.NewRequestWithContext(r.Context(), http.MethodHead, u.String(), nil)
	if err != nil {
		return false
	}
	resp, err := p.cfg.Registry.Transport().RoundTrip(req)
	if err != nil {
		// Forwarding reports the registry's trouble.
		return false
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || (resp.ContentLength >= 0 && resp.ContentLength != size) {
		return false
	}
	p.cache.hits.Inc()
	hd := w.Header()
	ct := resp.Header.Get("Content-Type")
	if ct == "" {
		ct = "application/octet-stream"
	}
	hd.Set("Content-Type", ct)
	hd.Set("Docker-Content-Digest", digest)
	hd.Set("Etag", `"`+digest+`"`)
	hd.Set("Cache-Control", "max-age=31536000")
	// ServeContent answers ranges and HEAD, and copies with sendfile when
	// the writer reaches the connection.
	http.ServeContent(w, r, "", time.Time{}, f)
	return true
}
