package simulate

// Images (issue 14): with Config.PullImages a device fetches the images of
// a release during its update's download step, as a real agent would. A
// service it has never run pulls its image's layers through the platform
// registry (registry-proxy), logged in as its uuid with its device token; a
// service whose previous image it holds asks the API for the delta between
// the two (GET /device/v1/deltas), waits while it is computed, rebuilds the
// new layers from it and the old ones with imagedelta.Apply, and pulls the
// layers instead when there is no delta, the delta does not apply, or it
// waited too long. Every layer the device keeps is checked against the
// image's config (its diffID) and, when pulled, its manifest (its digest).

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/uuid"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/flock-io/flock-api/gen/client"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/imagedelta"
	"github.com/flock-io/flock-api/internal/layerdelta"
	"github.com/flock-io/flock-api/internal/registry"
)

const (
	// deltaAsks bounds how often a device asks for a delta that is still
	// being computed before it pulls the layers instead.
	deltaAsks = 20
	// deltaRetryDefault is the wait between asks when a 202 names none;
	// deltaRetryMax caps the wait a 202 asks for.
	deltaRetryDefault = 2 * time.Second
	deltaRetryMax     = 30 * time.Second
	// pullAttempts is how often a device tries to fetch an image (resolve
	// and pull its layers) before the update fails; pullBackoff the first
	// pause between attempts, doubled after each. A refusal may be stale
	// rights the proxy caches for a moment, so it is tried again too.
	pullAttempts = 3
	pullBackoff  = time.Second
	// maxProblem bounds the problem document read from a refused delta ask.
	maxProblem = 64 << 10
	// maxEventError is the update event's error's maxLength in the schema.
	maxEventError = 2000
)

// Fallback reasons: why a device that asked for a delta pulled the layers.
const (
	FallbackNotSmaller = "delta_not_smaller" // 409: a delta would not be worth it
	FallbackFailed     = "delta_failed"      // 409: no delta could be made
	FallbackInvalid    = "invalid"           // the delta did not apply or rebuilt other layers
	FallbackTimedOut   = "timeout"           // still computing when the asks ran out
	FallbackError      = "error"             // any other answer or failure (404, 5xx, network)
)

// DeltaFallbacks counts deltas given up for a pull of the layers, by reason.
type DeltaFallbacks struct {
	NotSmaller, Failed, Invalid, TimedOut, Errors int64
}

// Total is the sum over reasons.
func (f DeltaFallbacks) Total() int64 {
	return f.NotSmaller + f.Failed + f.Invalid + f.TimedOut + f.Errors
}

// ImageSummary is what the devices downloaded for their images.
type ImageSummary struct {
	// Pulled counts images fetched by pulling their layers (a layer the
	// device held already is not downloaded again); ByDelta images rebuilt
	// from a delta.
	Pulled, ByDelta int64
	// LayerBytes are the compressed layer bytes downloaded; DeltaBytes the
	// delta bytes downloaded.
	LayerBytes, DeltaBytes int64
	// Saved is, summed over the deltas applied, the size of the layers each
	// replaced (Flock-Delta-Layers-Size) minus its own.
	Saved int64
	// Fallbacks counts deltas asked for and given up, by reason: those
	// images were pulled (or failed to be).
	Fallbacks DeltaFallbacks
	// Failed counts image downloads that failed for good, each failing its
	// update.
	Failed int64
}

// ImageFetched is one image a device fetched (Config.OnImage).
type ImageFetched struct {
	Device  uuid.UUID
	Release uuid.UUID
	Service string
	// Image and Digest are the target state's; Digest may name an index.
	Image, Digest string
	// Manifest is the digest of the platform manifest the device used.
	Manifest string
	// DiffIDs are the image's layers the device now holds, lowest first,
	// each checked against the image's config.
	DiffIDs []string
	// Delta tells the image was rebuilt from a delta; Fallback, when not
	// empty, why a delta asked for was given up (one of the Fallback*
	// reasons) and the layers pulled instead.
	Delta    bool
	Fallback string
	// LayerBytes and DeltaBytes are what fetching the image downloaded.
	LayerBytes, DeltaBytes int64
}

// imageCounters are the simulation's image counters.
type imageCounters struct {
	pulled, byDelta, layerBytes, deltaBytes, saved, failed atomic.Int64
	notSmaller, deltaFailed, invalid, timedOut, errs       atomic.Int64
}

func (c *imageCounters) snapshot() *ImageSummary {
	return &ImageSummary{Pulled: c.pulled.Load(), ByDelta: c.byDelta.Load(),
		LayerBytes: c.layerBytes.Load(), DeltaBytes: c.deltaBytes.Load(), Saved: c.saved.Load(), Failed: c.failed.Load(),
		Fallbacks: DeltaFallbacks{NotSmaller: c.notSmaller.Load(), Failed: c.deltaFailed.Load(), Invalid: c.invalid.Load(),
			TimedOut: c.timedOut.Load(), Errors: c.errs.Load()}}
}

func (c *imageCounters) fallback(reason string) {
	switch reason {
	case FallbackNotSmaller:
		c.notSmaller.Add(1)
	case FallbackFailed:
		c.deltaFailed.Add(1)
	case FallbackInvalid:
		c.invalid.Add(1)
	case FallbackTimedOut:
		c.timedOut.Add(1)
	default:
		c.errs.Add(1)
	}
}

// String is the image counters as key=value pairs.
func (s ImageSummary) String() string {
	f := s.Fallbacks
	return fmt.Sprintf("images_pulled=%d images_delta=%d layer_bytes=%d delta_bytes=%d delta_saved=%d "+
		"fallback_not_smaller=%d fallback_delta_failed=%d fallback_invalid=%d fallback_timeout=%d fallback_error=%d image_failures=%d",
		s.Pulled, s.ByDelta, s.LayerBytes, s.DeltaBytes, s.Saved, f.NotSmaller, f.Failed, f.Invalid, f.TimedOut, f.Errors, s.Failed)
}

// registryTransport is how the devices reach the registry: Config's
// RegistryTransport, or the default transport dialling RegistryAddr for
// every address when that is set.
func registryTransport(cfg Config) (http.RoundTripper, func()) {
	if cfg.RegistryTransport != nil {
		return cfg.RegistryTransport, func() {}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = cfg.Concurrency
	if addr := cfg.RegistryAddr; addr != "" {
		dial := tr.DialContext
		tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) { return dial(ctx, network, addr) }
	}
	return tr, tr.CloseIdleConnections
}

// heldImage is a service's image as a device holds it.
type heldImage struct {
	digest   string // as the target state names it
	manifest v1.Hash
	diffIDs  []v1.Hash
}

// imageStore is a device's images, one per service, and their layers. Only
// one goroutine uses it at a time: the fetch of the update under way.
type imageStore struct {
	layers   layerStore
	services map[string]*heldImage
}

func newImageStore(dir string, device uuid.UUID) (*imageStore, error) {
	st := &imageStore{services: map[string]*heldImage{}}
	if dir == "" {
		st.layers = &memLayers{m: map[v1.Hash][]byte{}}
		return st, nil
	}
	d := filepath.Join(dir, device.String())
	if err := os.MkdirAll(d, 0o750); err != nil {
		return nil, fmt.Errorf("layer directory: %w", err)
	}
	st.layers = &dirLayers{dir: d, sizes: map[v1.Hash]int64{}}
	return st, nil
}

// prune drops the layers no held image uses.
func (st *imageStore) prune() {
	keep := map[v1.Hash]bool{}
	for _, img := range st.services {
		for _, id := range img.diffIDs {
			keep[id] = true
		}
	}
	for _, id := range st.layers.list() {
		if !keep[id] {
			st.layers.remove(id)
		}
	}
}

// layerStore holds uncompressed layers by diffID.
type layerStore interface {
	has(diffID v1.Hash) bool
	// open returns the layer for reading at random; close it after.
	open(diffID v1.Hash) (layerdelta.Layer, io.Closer, error)
	// create returns a writer whose commit keeps what was written as
	// diffID's layer (the caller checked it) and whose abort drops it.
	create(diffID v1.Hash) (layerWriter, error)
	remove(diffID v1.Hash)
	list() []v1.Hash
	// close drops every layer.
	close() error
}

type layerWriter interface {
	io.Writer
	commit() error
	abort()
}

// memLayers keeps layers in memory.
type memLayers struct{ m map[v1.Hash][]byte }

func (s *memLayers) has(id v1.Hash) bool { _, ok := s.m[id]; return ok }

func (s *memLayers) open(id v1.Hash) (layerdelta.Layer, io.Closer, error) {
	b, ok := s.m[id]
	if !ok {
		return layerdelta.Layer{}, nil, fmt.Errorf("layer %s: %w", id, os.ErrNotExist)
	}
	return layerdelta.Layer{R: bytes.NewReader(b), Size: int64(len(b))}, io.NopCloser(nil), nil
}

func (s *memLayers) create(id v1.Hash) (layerWriter, error) { return &memWriter{s: s, id: id}, nil }
func (s *memLayers) remove(id v1.Hash)                      { delete(s.m, id) }
func (s *memLayers) close() error                           { clear(s.m); return nil }

func (s *memLayers) list() []v1.Hash {
	out := make([]v1.Hash, 0, len(s.m))
	for id := range s.m {
		out = append(out, id)
	}
	return out
}

type memWriter struct {
	s   *memLayers
	id  v1.Hash
	buf bytes.Buffer
}

func (w *memWriter) Write(p []byte) (int, error) { return w.buf.Write(p) }
func (w *memWriter) commit() error               { w.s.m[w.id] = w.buf.Bytes(); return nil }
func (w *memWriter) abort()                      { w.buf = bytes.Buffer{} }

// dirLayers keeps layers as files of a directory, one per diffID.
type dirLayers struct {
	dir   string
	sizes map[v1.Hash]int64
}

func (s *dirLayers) path(id v1.Hash) string { return filepath.Join(s.dir, id.Algorithm+"-"+id.Hex) }

func (s *dirLayers) has(id v1.Hash) bool { _, ok := s.sizes[id]; return ok }

func (s *dirLayers) open(id v1.Hash) (layerdelta.Layer, io.Closer, error) {
	size, ok := s.sizes[id]
	if !ok {
		return layerdelta.Layer{}, nil, fmt.Errorf("layer %s: %w", id, os.ErrNotExist)
	}
	f, err := os.Open(s.path(id))
	if err != nil {
		return layerdelta.Layer{}, nil, err
	}
	return layerdelta.Layer{R: f, Size: size}, f, nil
}

func (s *dirLayers) create(id v1.Hash) (layerWriter, error) {
	f, err := os.CreateTemp(s.dir, "incoming-*")
	if err != nil {
		return nil, err
	}
	return &fileWriter{s: s, id: id, f: f}, nil
}

func (s *dirLayers) remove(id v1.Hash) {
	delete(s.sizes, id)
	_ = os.Remove(s.path(id))
}

func (s *dirLayers) list() []v1.Hash {
	out := make([]v1.Hash, 0, len(s.sizes))
	for id := range s.sizes {
		out = append(out, id)
	}
	return out
}

func (s *dirLayers) close() error { clear(s.sizes); return os.RemoveAll(s.dir) }

type fileWriter struct {
	s  *dirLayers
	id v1.Hash
	f  *os.File
	n  int64
}

func (w *fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *fileWriter) commit() error {
	if err := w.f.Close(); err != nil {
		_ = os.Remove(w.f.Name())
		return err
	}
	if err := os.Rename(w.f.Name(), w.s.path(w.id)); err != nil {
		_ = os.Remove(w.f.Name())
		return err
	}
	w.s.sizes[w.id] = w.n
	return nil
}

func (w *fileWriter) abort() {
	_ = w.f.Close()
	_ = os.Remove(w.f.Name())
}

// fetchError is a failed image download: the update fails on service.
type fetchError struct {
	service string
	err     error
}

func (e *fetchError) Error() string { return "service " + e.service + ": " + e.err.Error() }
func (e *fetchError) Unwrap() error { return e.err }

// fetchImages fetches the images of release's services the device does not
// hold, then forgets the images and layers of services the release does
// not have. It runs on its own goroutine while the loop goes on.
func (d *device) fetchImages(ctx context.Context, release uuid.UUID, svcs []client.TargetService) error {
	st := d.images
	tok, err := d.currentToken(ctx)
	if err != nil {
		return &fetchError{service: firstName(svcs), err: fmt.Errorf("device token: %w", err)}
	}
	puller, err := remote.NewPuller(remote.WithAuth(&authn.Basic{Username: d.id.String(), Password: tok}),
		remote.WithTransport(d.s.registryRT), remote.WithContext(ctx))
	if err != nil {
		return &fetchError{service: firstName(svcs), err: err}
	}
	f := &imageFetch{d: d, st: st, puller: puller, release: release}
	next := map[string]*heldImage{}
	for _, svc := range svcs {
		if svc.Image == "" || svc.Digest == "" {
			continue // nothing to run for this architecture
		}
		if held := st.services[svc.Name]; held != nil && held.digest == svc.Digest {
			next[svc.Name] = held
			continue
		}
		img, err := f.service(ctx, svc, st.services[svc.Name])
		if err != nil {
			return &fetchError{service: svc.Name, err: err}
		}
		next[svc.Name] = img
	}
	st.services = next
	st.prune()
	return nil
}

func firstName(svcs []client.TargetService) string {
	if len(svcs) == 0 {
		return ""
	}
	return svcs[0].Name
}

// imageFetch is one update's fetch of its images.
type imageFetch struct {
	d       *device
	st      *imageStore
	puller  *remote.Puller
	release uuid.UUID
}

// resolved is a service's image for the device's platform.
type resolved struct {
	img      v1.Image
	manifest v1.Hash
	layers   []v1.Descriptor // from the manifest
	diffIDs  []v1.Hash       // from the config, one per layer
}

// service fetches svc's image: by delta from prev when the device holds
// one, else (or when the delta is given up) by pulling the layers.
func (f *imageFetch) service(ctx context.Context, svc client.TargetService, prev *heldImage) (*heldImage, error) {
	stats := &f.d.s.images
	var res *resolved
	if err := f.retry(ctx, "resolve", func() error {
		var err error
		res, err = f.resolve(ctx, svc)
		return err
	}); err != nil {
		f.failed(ctx)
		return nil, err
	}
	held := &heldImage{digest: svc.Digest, manifest: res.manifest, diffIDs: res.diffIDs}
	ev := ImageFetched{Device: f.d.id, Release: f.release, Service: svc.Name, Image: svc.Image, Digest: svc.Digest,
		Manifest: res.manifest.String()}
	for _, id := range res.diffIDs {
		ev.DiffIDs = append(ev.DiffIDs, id.String())
	}

	if prev != nil && prev.digest != svc.Digest && !f.complete(res) {
		ok, reason, n := f.delta(ctx, prev, svc, res)
		ev.DeltaBytes = n
		if ok {
			stats.byDelta.Add(1)
			ev.Delta = true
			f.d.log.Debug("image rebuilt from a delta", "service", svc.Name, "digest", svc.Digest, "delta_bytes", n)
			f.report(ev)
			return held, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		stats.fallback(reason)
		ev.Fallback = reason
		f.d.log.Debug("delta given up; pulling the layers", "service", svc.Name, "from", prev.digest, "to", svc.Digest, "reason", reason)
	}

	if err := f.retry(ctx, "pull", func() error {
		n, err := f.pull(ctx, res)
		ev.LayerBytes += n
		return err
	}); err != nil {
		f.failed(ctx)
		return nil, err
	}
	stats.pulled.Add(1)
	f.d.log.Debug("image pulled", "service", svc.Name, "digest", svc.Digest, "layer_bytes", ev.LayerBytes)
	f.report(ev)
	return held, nil
}

// failed counts an image that could not be fetched, unless the run is
// ending.
func (f *imageFetch) failed(ctx context.Context) {
	if ctx.Err() == nil {
		f.d.s.images.failed.Add(1)
	}
}

func (f *imageFetch) report(ev ImageFetched) {
	if on := f.d.s.cfg.OnImage; on != nil {
		on(ev)
	}
}

// complete reports whether the device holds every layer of res already.
func (f *imageFetch) complete(res *resolved) bool {
	for _, id := range res.diffIDs {
		if !f.st.layers.has(id) {
			return false
		}
	}
	return true
}

// retry runs op up to pullAttempts times, pausing between attempts.
func (f *imageFetch) retry(ctx context.Context, what string, op func() error) error {
	pause := pullBackoff
	var err error
	for attempt := range pullAttempts {
		if attempt > 0 {
			f.d.s.warn("image-"+what, "fetching an image failed; trying again", "device", f.d.id.String(), "error", err)
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
			pause *= 2
		}
		if err = op(); err == nil || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// resolve reads svc's manifest (the platform's, when its digest names an
// index) and config through the registry.
func (f *imageFetch) resolve(ctx context.Context, svc client.TargetService) (*resolved, error) {
	var opts []name.Option
	if f.d.s.insecureRegistry {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(svc.Image, opts...)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", svc.Image, err)
	}
	digest := ref.Context().Digest(svc.Digest)
	desc, err := f.puller.Get(ctx, digest)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", digest, err)
	}
	arch := f.d.s.cfg.Architecture
	var img v1.Image
	switch {
	case desc.MediaType.IsIndex():
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, fmt.Errorf("index %s: %w", digest, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return nil, fmt.Errorf("index %s: %w", digest, err)
		}
		h, err := pickPlatform(im, arch)
		if err != nil {
			return nil, fmt.Errorf("index %s: %w", digest, err)
		}
		if img, err = idx.Image(h); err != nil {
			return nil, fmt.Errorf("manifest %s: %w", h, err)
		}
	case desc.MediaType.IsImage():
		if img, err = desc.Image(); err != nil {
			return nil, fmt.Errorf("manifest %s: %w", digest, err)
		}
	default:
		return nil, fmt.Errorf("%s is a %s, not an image or an index", digest, desc.MediaType)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("manifest of %s: %w", digest, err)
	}
	h, err := img.Digest()
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("config of %s: %w", digest, err)
	}
	if want, ok := registry.Platform(arch); ok && !desc.MediaType.IsIndex() && cf.Architecture != "" &&
		!platformMatches(&v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant}, want) {
		return nil, fmt.Errorf("%s is for %s/%s, not %s", digest, cf.OS, cf.Architecture, arch)
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("%s: %d layers but %d diffIDs in its config", digest, len(m.Layers), len(cf.RootFS.DiffIDs))
	}
	return &resolved{img: img, manifest: h, layers: m.Layers, diffIDs: cf.RootFS.DiffIDs}, nil
}

// pickPlatform chooses the manifest of an index for arch, a Flock
// architecture; without one, the index's only linux image.
func pickPlatform(im *v1.IndexManifest, arch string) (v1.Hash, error) {
	want, known := registry.Platform(arch)
	var only []v1.Hash
	for _, m := range im.Manifests {
		if !m.MediaType.IsImage() {
			continue
		}
		if known && platformMatches(m.Platform, want) {
			return m.Digest, nil
		}
		if m.Platform == nil || m.Platform.OS == "linux" {
			only = append(only, m.Digest)
		}
	}
	switch {
	case known:
		return v1.Hash{}, fmt.Errorf("no manifest for linux/%s", arch)
	case len(only) == 1:
		return only[0], nil
	}
	return v1.Hash{}, fmt.Errorf("%d linux manifests and no architecture to choose by (Config.Architecture, --architecture)", len(only))
}

// platformMatches reports whether an index entry's platform is want's;
// arm64's variant v8 is implied (as registry.Resolve decides).
func platformMatches(got *v1.Platform, want v1.Platform) bool {
	if got == nil || got.OS != want.OS || got.Architecture != want.Architecture {
		return false
	}
	return got.Variant == want.Variant || want.Architecture == "arm64" && want.Variant == "" && got.Variant == "v8"
}

// pull downloads the layers of res the device lacks, checking each one's
// digest and diffID, and returns the bytes downloaded.
func (f *imageFetch) pull(ctx context.Context, res *resolved) (int64, error) {
	var total int64
	for i, desc := range res.layers {
		id := res.diffIDs[i]
		if f.st.layers.has(id) {
			continue
		}
		n, err := f.pullLayer(ctx, res.img, desc, id)
		total += n
		f.d.s.images.layerBytes.Add(n)
		if err != nil {
			return total, fmt.Errorf("layer %d (%s): %w", i, desc.Digest, err)
		}
	}
	return total, nil
}

func (f *imageFetch) pullLayer(ctx context.Context, img v1.Image, desc v1.Descriptor, diffID v1.Hash) (int64, error) {
	l, err := img.LayerByDigest(desc.Digest)
	if err != nil {
		return 0, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	compressed := &countingReader{r: rc, ctx: ctx}
	sum := sha256.New()
	br := bufio.NewReader(io.TeeReader(compressed, sum))
	plain, closePlain, err := decompress(br)
	if err != nil {
		return compressed.n, err
	}
	w, err := f.st.layers.create(diffID)
	if err != nil {
		closePlain()
		return compressed.n, err
	}
	unSum := sha256.New()
	_, err = io.Copy(io.MultiWriter(w, unSum), plain)
	closePlain()
	if err == nil {
		// The rest of the blob (a gzip trailer the reader left, padding).
		_, err = io.Copy(io.Discard, br)
	}
	switch {
	case err != nil:
	case compressed.n != desc.Size || hashOf(sum) != desc.Digest:
		err = fmt.Errorf("downloaded %d bytes of digest %s, the manifest says %d bytes of %s", compressed.n, hashOf(sum), desc.Size, desc.Digest)
	case hashOf(unSum) != diffID:
		err = fmt.Errorf("uncompressed it is %s, the config says %s", hashOf(unSum), diffID)
	}
	if err != nil {
		w.abort()
		return compressed.n, err
	}
	return compressed.n, w.commit()
}

// decompress reads a layer blob as gzip, zstd or plain tar, by its first
// bytes (as engines do, whatever the media type says).
func decompress(br *bufio.Reader) (io.Reader, func(), error) {
	magic, _ := br.Peek(4)
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("gzip: %w", err)
		}
		zr.Multistream(true)
		return zr, func() { _ = zr.Close() }, nil
	case bytes.Equal(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, nil, fmt.Errorf("zstd: %w", err)
		}
		return zr, zr.Close, nil
	}
	return br, func() {}, nil
}

func hashOf(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

// countingReader counts what it read and stops at the end of ctx.
type countingReader struct {
	r   io.Reader
	ctx context.Context
	n   int64
	err error // the first read error other than EOF
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

// delta asks for the delta from prev to svc's image until it is served,
// refused or the asks run out, and applies it. ok tells the device holds
// every layer of res afterwards; otherwise reason says why not. n is the
// delta bytes downloaded.
func (f *imageFetch) delta(ctx context.Context, prev *heldImage, svc client.TargetService, res *resolved) (ok bool, reason string, n int64) {
	dropped := false
	for range deltaAsks {
		resp, err := f.askDelta(ctx, prev.digest, svc.Digest)
		if err != nil {
			f.d.s.warn("delta-ask", "asking for a delta failed; pulling the layers", "device", f.d.id.String(), "error", err)
			return false, FallbackError, n
		}
		switch resp.StatusCode {
		case http.StatusOK:
			got, err := f.applyDelta(ctx, resp, res)
			n += got
			resp.Body.Close()
			if err != nil {
				if ctx.Err() != nil {
					return false, FallbackError, n
				}
				f.d.s.warn("delta-apply", "a delta did not apply; pulling the layers", "device", f.d.id.String(),
					"service", svc.Name, "error", err)
				var body *bodyError
				if errors.As(err, &body) {
					return false, FallbackError, n
				}
				return false, FallbackInvalid, n
			}
			return true, "", n
		case http.StatusAccepted:
			wait := retryAfter(resp.Header.Get("Retry-After"))
			drain(resp)
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return false, FallbackError, n
			}
		case http.StatusConflict:
			p := readProblem(resp)
			switch p.Code {
			case FallbackNotSmaller:
				return false, FallbackNotSmaller, n
			case FallbackFailed:
				return false, FallbackFailed, n
			}
			f.d.s.warn("delta-409", "a delta was refused; pulling the layers", "device", f.d.id.String(), "code", p.Code)
			return false, FallbackError, n
		case http.StatusUnauthorized:
			drain(resp)
			if dropped {
				return false, FallbackError, n
			}
			dropped = true
			f.d.dropToken() // expired early or keys changed: once more with a new token
		default:
			p := readProblem(resp)
			f.d.s.warn(fmt.Sprintf("delta-%d", resp.StatusCode), "a delta was refused; pulling the layers", "device", f.d.id.String(),
				"status", resp.StatusCode, "code", p.Code)
			return false, FallbackError, n
		}
	}
	return false, FallbackTimedOut, n
}

// askDelta sends one GET /device/v1/deltas.
func (f *imageFetch) askDelta(ctx context.Context, from, to string) (*http.Response, error) {
	tok, err := f.d.currentToken(ctx)
	if err != nil {
		return nil, err
	}
	return f.d.s.deltaAPI.DeviceDeltaGet(ctx, &client.DeviceDeltaGetParams{From: from, To: to},
		func(_ context.Context, r *http.Request) error {
			r.Header.Set("Authorization", "Bearer "+tok)
			return nil
		})
}

// bodyError is a failure to read the delta's body (the network, not the
// delta).
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "reading the delta: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// applyDelta rebuilds res's layers from the delta resp carries and the
// layers the device holds, keeping each once its diffID is checked against
// res's config, and counts the bytes. It returns the delta bytes read.
func (f *imageFetch) applyDelta(ctx context.Context, resp *http.Response, res *resolved) (int64, error) {
	stats := &f.d.s.images
	body := &countingReader{r: resp.Body, ctx: ctx}
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			_ = c.Close()
		}
	}()
	have := func(diffID string) (layerdelta.Layer, bool) {
		h, err := v1.NewHash(diffID)
		if err != nil || !f.st.layers.has(h) {
			return layerdelta.Layer{}, false
		}
		l, c, err := f.st.layers.open(h)
		if err != nil {
			return layerdelta.Layer{}, false
		}
		closers = append(closers, c)
		return l, true
	}
	i := 0
	out := func(e imagedelta.IndexEntry) (io.WriteCloser, error) {
		at := i
		i++
		if at >= len(res.diffIDs) || e.DiffID != res.diffIDs[at].String() {
			return nil, fmt.Errorf("%w: layer %d of the delta is %s, not the image's", imagedelta.ErrMismatch, at, e.DiffID)
		}
		if f.st.layers.has(res.diffIDs[at]) {
			return nil, nil // held already: Apply still checks it
		}
		w, err := f.st.layers.create(res.diffIDs[at])
		if err != nil {
			return nil, err
		}
		return applyWriter{w}, nil
	}
	idx, err := imagedelta.Apply(ctx, body, have, out)
	if err == nil {
		// What follows the tar's end (its zero blocks), for the count and
		// so the connection can serve again.
		_, _ = io.Copy(io.Discard, body)
	}
	stats.deltaBytes.Add(body.n)
	switch {
	case body.err != nil:
		return body.n, &bodyError{body.err}
	case err != nil:
		return body.n, err
	case idx.To.Manifest != res.manifest.String():
		return body.n, fmt.Errorf("the delta rebuilds manifest %s, the image is %s", idx.To.Manifest, res.manifest)
	case i != len(res.diffIDs):
		return body.n, fmt.Errorf("the delta rebuilt %d layers, the image has %d", i, len(res.diffIDs))
	case !f.complete(res):
		return body.n, errors.New("a layer of the image is missing after the delta")
	}
	layers, err := strconv.ParseInt(resp.Header.Get("Flock-Delta-Layers-Size"), 10, 64)
	if err != nil {
		// Not said: what pulling the layers the device lacked would have cost.
		layers = 0
		for _, d := range res.layers {
			layers += d.Size
		}
	}
	stats.saved.Add(layers - body.n)
	return body.n, nil
}

// applyWriter is a layerWriter as Apply closes it: Close after the layer
// was checked, CloseWithError when it was not.
type applyWriter struct{ w layerWriter }

func (a applyWriter) Write(p []byte) (int, error) { return a.w.Write(p) }
func (a applyWriter) Close() error                { return a.w.commit() }
func (a applyWriter) CloseWithError(error) error  { a.w.abort(); return nil }

// retryAfter is a 202's wait, within bounds.
func retryAfter(v string) time.Duration {
	secs, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || secs < 0 {
		return deltaRetryDefault
	}
	return min(max(time.Duration(secs*float64(time.Second)), 100*time.Millisecond), deltaRetryMax)
}

func readProblem(resp *http.Response) client.Problem {
	defer resp.Body.Close()
	var p client.Problem
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxProblem))
	_ = json.Unmarshal(b, &p)
	return p
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxProblem))
	resp.Body.Close()
}

// downloadFailed ends u at its next step: the release's images could not be
// fetched, so the update fails as a release that does not start does, with
// the service whose image failed reported failed (the others stopped) and a
// failed update event saying why.
func (u *update) downloadFailed(err error) {
	service := ""
	var fe *fetchError
	if errors.As(err, &fe) {
		service, err = fe.service, fe.err
	}
	msg := "image download failed: " + err.Error()
	if len(msg) > maxEventError {
		msg = msg[:maxEventError]
		for !utf8.ValidString(msg) {
			msg = msg[:len(msg)-1]
		}
	}
	v := view{release: u.release}
	for _, s := range u.target {
		st := events.ServiceStateStopped
		if s.Name == service {
			st = events.ServiceStateFailed
		}
		v.services = append(v.services, events.ServiceStatus{Name: s.Name, Status: ptr(st)})
	}
	e := UpdateStep{Release: u.release, Attempt: u.attempt, Type: events.UpdateEventTypeFailed, Service: service, Error: msg}
	u.steps = append(u.steps[:u.next:u.next], step{what: stepStarted, events: []UpdateStep{e}, view: v})
	u.fails = true
}
