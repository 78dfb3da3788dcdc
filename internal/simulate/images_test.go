package simulate_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/imagedelta"
	"github.com/flock-io/flock-api/internal/imagedelta/imagedeltatest"
	"github.com/flock-io/flock-api/internal/simulate"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// The tests here run the simulator with PullImages against the whole
// platform in one process (apptest.Start: --target=all with the embedded
// registry, the registry-proxy, the delta worker and gofakes3), with two
// real versions of an image (imagedeltatest.BuildPair: a shared base layer,
// a Go program compiled at two versions, and a layer only the second has).
// They share no helper with the other test files of the package.

// imgFleet is a --target=all server with an organisation, a fleet of the
// images' architecture, a provisioning key and the fleet's repository for
// service app.
type imgFleet struct {
	srv   *apptest.Server
	owner string
	org   string
	fleet string
	key   string
	repo  string // <org slug>/<fleet slug>/app
	pair  imagedeltatest.Pair
}

func newImgFleet(t *testing.T, args ...string) *imgFleet {
	t.Helper()
	if imagedeltatest.Arch != "amd64" && imagedeltatest.Arch != "arm64" {
		t.Skipf("the test images are built for %s, which Flock spells otherwise", imagedeltatest.Arch)
	}
	pair := imagedeltatest.BuildPair(t)
	// The devices are told the broker's address; the public URL's host
	// (flock.test) does not resolve here.
	// The API's body limit (1 MiB by default) applies to the
	// registry-proxy's blob uploads too, and the program's layer is larger.
	port := imgFreePort(t)
	srv := apptest.Start(t, append([]string{"--target=all", "--mqtt-listen=127.0.0.1:" + port,
		"--mqtt-public-url=mqtt://127.0.0.1:" + port, "--http-body-limit=64MiB"}, args...)...)
	f := &imgFleet{srv: srv, owner: srv.Token(t, "owner@example.com"), pair: pair}
	org := f.must(t, 201, "POST", "/v1/orgs", map[string]any{"name": "Acme"})
	fl := f.must(t, 201, "POST", "/v1/orgs/"+org["id"].(string)+"/fleets", map[string]any{"name": "sensors", "architecture": imagedeltatest.Arch})
	f.org, f.fleet = org["id"].(string), fl["id"].(string)
	f.key = f.must(t, 201, "POST", "/v1/fleets/"+f.fleet+"/provisioning-keys", map[string]any{"name": "simulator"})["secret"].(string)
	f.repo = org["slug"].(string) + "/" + fl["slug"].(string) + "/app"
	return f
}

func (f *imgFleet) must(t *testing.T, want int, method, path string, body any) map[string]any {
	t.Helper()
	status, _, out := f.srv.Do(t, method, path, f.owner, body)
	if status != want {
		t.Fatalf("%s %s = %d, want %d: %v", method, path, status, want, out)
	}
	return out
}

// push pushes img to the fleet's repository through the registry-proxy.
func (f *imgFleet) push(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := f.srv.Push(f.owner, f.repo, img)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// pushIndex pushes an image index holding img for the fleet's architecture
// and another image for riscv64, and returns the index's digest.
func (f *imgFleet) pushIndex(t *testing.T, img v1.Image) string {
	t.Helper()
	other, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: other, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "riscv64"}}},
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: imagedeltatest.Arch}}})
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewDigest(apptest.RegistryHost+"/"+f.repo+"@"+d.String(), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	tr := f.srv.RegistryTransport().(*http.Transport)
	defer tr.CloseIdleConnections()
	if err := remote.WriteIndex(ref, idx, remote.WithAuth(&authn.Basic{Username: "flock", Password: f.owner}),
		remote.WithTransport(tr)); err != nil {
		t.Fatalf("push index: %v", err)
	}
	return d.String()
}

// release creates a final release whose service app runs digest, and
// returns its id.
func (f *imgFleet) release(t *testing.T, version, digest string) string {
	t.Helper()
	return f.must(t, 201, "POST", "/v1/fleets/"+f.fleet+"/releases", map[string]any{"version": version, "status": "final",
		"services": []any{map[string]any{"name": "app", "images": map[string]any{imagedeltatest.Arch: map[string]any{
			"image": apptest.RegistryHost + "/" + f.repo, "digest": digest}}}}})["id"].(string)
}

// runningRelease waits until the fleet's one device runs release with its
// service running, as the API (PostgreSQL, which the delta endpoint reads)
// says, and returns the device's id.
//
// The wait is longer than testutil.Wait: an update by delta waits for the
// delta worker, which under the race detector with other tests beside it
// may take longer than that.
func (f *imgFleet) runningRelease(t *testing.T, sim *imgSim, release string) string {
	t.Helper()
	var id string
	waitLong(t, "the device running release "+release, func() error {
		if err := sim.ended(); err != nil {
			return err
		}
		items, _ := f.must(t, 200, "GET", "/v1/orgs/"+f.org+"/devices?running_release_id="+release, nil)["items"].([]any)
		if len(items) != 1 {
			return fmt.Errorf("%d devices run it; summary %s", len(items), sim.summary())
		}
		d := items[0].(map[string]any)
		st, _ := d["reported_state"].(map[string]any)
		svcs, _ := st["services"].([]any)
		if len(svcs) != 1 || svcs[0].(map[string]any)["status"] != "running" {
			return fmt.Errorf("services %v", svcs)
		}
		id = d["id"].(string)
		return nil
	})
	return id
}

// imgSim is a simulator run, with the images its devices fetched.
type imgSim struct {
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
	sum    simulate.Summary
	err    error
	last   atomic.Pointer[simulate.Summary]

	mu     sync.Mutex
	images []simulate.ImageFetched
}

func startImgSim(t *testing.T, cfg simulate.Config) *imgSim {
	t.Helper()
	s := &imgSim{done: make(chan struct{})}
	cfg.Devices, cfg.PullImages, cfg.Architecture = 1, true, imagedeltatest.Arch
	cfg.SummaryEvery, cfg.Out, cfg.Log = 20*time.Millisecond, io.Discard, imgLog(t)
	cfg.OnSummary = func(sum simulate.Summary) { s.last.Store(&sum) }
	cfg.OnImage = func(ev simulate.ImageFetched) {
		s.mu.Lock()
		s.images = append(s.images, ev)
		s.mu.Unlock()
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go func() {
		defer close(s.done)
		s.sum, s.err = simulate.Run(ctx, cfg)
	}()
	t.Cleanup(func() { s.stop(t) })
	return s
}

// stop ends the run and returns its final summary.
func (s *imgSim) stop(t *testing.T) simulate.Summary {
	t.Helper()
	s.cancel()
	select {
	case <-s.done:
	case <-time.After(testutil.Wait):
		t.Fatal("Run did not return after its context ended")
	}
	s.once.Do(func() {
		if s.err != nil {
			t.Errorf("simulate: %v", s.err)
		}
	})
	return s.sum
}

// ended is the error of a run that ended early, for the waits to report.
func (s *imgSim) ended() error {
	select {
	case <-s.done:
		return fmt.Errorf("simulate ended: %v", s.err)
	default:
		return nil
	}
}

func (s *imgSim) summary() simulate.Summary {
	if p := s.last.Load(); p != nil {
		return *p
	}
	return simulate.Summary{}
}

func (s *imgSim) fetched() []simulate.ImageFetched {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.images)
}

// diffIDs are img's layers' diffIDs, as its config names them.
func diffIDs(t *testing.T, img v1.Image) []string {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, h := range cf.RootFS.DiffIDs {
		out = append(out, h.String())
	}
	return out
}

// layerSizes is the sum of the compressed sizes of img's layers whose
// diffIDs are not among except's.
func layerSizes(t *testing.T, img v1.Image, except ...string) int64 {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, l := range ls {
		id, err := l.DiffID()
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(except, id.String()) {
			continue
		}
		size, err := l.Size()
		if err != nil {
			t.Fatal(err)
		}
		n += size
	}
	return n
}

// TestPullImagesByDelta: a device pulls release 1's image by its layers,
// then gets release 2's as a delta from it, rebuilds release 2's layers
// (kept on disk here) and runs release 2, with no fallback.
func TestPullImagesByDelta(t *testing.T) {
	f := newImgFleet(t)
	a, b := f.push(t, f.pair.A), f.push(t, f.pair.B)
	rel1 := f.release(t, "1", a)
	dir := t.TempDir()
	sim := startImgSim(t, simulate.Config{API: f.srv.URL, ProvisioningKey: f.key, LayerDir: dir,
		RegistryTransport: f.srv.RegistryTransport()})
	device := f.runningRelease(t, sim, rel1)

	aIDs, bIDs := diffIDs(t, f.pair.A), diffIDs(t, f.pair.B)
	first := sim.fetched()
	if len(first) != 1 || first[0].Delta || first[0].Fallback != "" || first[0].Digest != a ||
		!slices.Equal(first[0].DiffIDs, aIDs) || first[0].LayerBytes != layerSizes(t, f.pair.A) {
		t.Fatalf("release 1's image fetched as %+v, want its layers pulled (%d bytes): %v", first, layerSizes(t, f.pair.A), aIDs)
	}

	rel2 := f.release(t, "2", b)
	f.runningRelease(t, sim, rel2)
	got := sim.fetched()
	if len(got) != 2 {
		t.Fatalf("images fetched: %+v, want release 1's and 2's", got)
	}
	ev := got[1]
	if !ev.Delta || ev.Fallback != "" || ev.LayerBytes != 0 || ev.DeltaBytes <= 0 || ev.Digest != b ||
		ev.Release.String() != rel2 || ev.Device.String() != device || ev.Service != "app" {
		t.Fatalf("release 2's image fetched as %+v, want by a delta alone", ev)
	}
	if ev.Manifest != b || !slices.Equal(ev.DiffIDs, bIDs) {
		t.Fatalf("release 2's image rebuilt as %s %v, want %s %v", ev.Manifest, ev.DiffIDs, b, bIDs)
	}

	// The device holds exactly release 2's layers now (release 1's app
	// layer was dropped), and each file is the layer its name says.
	testutil.Eventually(t, "the summary to count both images", testutil.Until(func() bool {
		im := sim.summary().Images
		return im != nil && im.ByDelta == 1 && im.Pulled == 1
	}))
	entries, err := os.ReadDir(filepath.Join(dir, device))
	if err != nil {
		t.Fatal(err)
	}
	var held []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, device, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(b); "sha256-"+hex.EncodeToString(sum[:]) != e.Name() {
			t.Errorf("layer file %s holds sha256:%x", e.Name(), sum)
		}
		held = append(held, strings.Replace(e.Name(), "-", ":", 1))
	}
	want := slices.Clone(bIDs)
	slices.Sort(want)
	slices.Sort(held)
	if !slices.Equal(held, want) {
		t.Errorf("layer files %v, want release 2's %v", held, want)
	}

	sum := sim.stop(t)
	im := sum.Images
	if im == nil {
		t.Fatalf("no image counters in %s", sum)
	}
	t.Logf("images: %s", im)
	if im.Pulled != 1 || im.ByDelta != 1 || im.Failed != 0 || im.Fallbacks.Total() != 0 {
		t.Errorf("image counters %+v, want one image pulled and one by delta, no fallback or failure", *im)
	}
	// The delta replaced B's new layers (app v2 and data).
	replaced := layerSizes(t, f.pair.B, aIDs...)
	if im.LayerBytes != layerSizes(t, f.pair.A) || im.DeltaBytes != ev.DeltaBytes || im.DeltaBytes >= replaced ||
		im.Saved != replaced-im.DeltaBytes || im.Saved <= 0 {
		t.Errorf("bytes: layers %d, delta %d, saved %d; want layers %d, a delta smaller than the %d bytes it replaces, saving the difference",
			im.LayerBytes, im.DeltaBytes, im.Saved, layerSizes(t, f.pair.A), replaced)
	}
	if sum.UpdatesDone != 2 || sum.UpdatesFailed != 0 {
		t.Errorf("updates done %d, failed %d; want 2 and 0", sum.UpdatesDone, sum.UpdatesFailed)
	}
	if !strings.Contains(sum.String(), fmt.Sprintf("images_pulled=1 images_delta=1 layer_bytes=%d delta_bytes=%d", im.LayerBytes, im.DeltaBytes)) {
		t.Errorf("summary line without the image counters: %s", sum)
	}
	if _, err := os.Stat(filepath.Join(dir, device)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the device's layer directory outlived the run: %v", err)
	}
}

// TestPullImagesCorruptDeltaFallsBack: the delta reaches the device with a
// byte of a patch flipped (by a proxy in front of the API); it does not
// apply, and the device pulls release 2's layers instead and runs it.
// The releases name image indexes, so the device picks its platform.
func TestPullImagesCorruptDeltaFallsBack(t *testing.T) {
	f := newImgFleet(t)
	a, b := f.pushIndex(t, f.pair.A), f.pushIndex(t, f.pair.B)
	api, corrupted := corruptingProxy(t, f.srv.URL)
	rel1 := f.release(t, "1", a)
	sim := startImgSim(t, simulate.Config{API: api, ProvisioningKey: f.key, RegistryTransport: f.srv.RegistryTransport()})
	f.runningRelease(t, sim, rel1)
	rel2 := f.release(t, "2", b)
	f.runningRelease(t, sim, rel2)

	if corrupted.Load() != 1 {
		t.Fatalf("%d deltas corrupted, want 1", corrupted.Load())
	}
	got := sim.fetched()
	if len(got) != 2 {
		t.Fatalf("images fetched: %+v, want release 1's and 2's", got)
	}
	aIDs, bIDs := diffIDs(t, f.pair.A), diffIDs(t, f.pair.B)
	bManifest, err := f.pair.B.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ev := got[1]
	if ev.Delta || ev.Fallback != simulate.FallbackInvalid || ev.DeltaBytes <= 0 || ev.Digest != b ||
		ev.Manifest != bManifest.String() || !slices.Equal(ev.DiffIDs, bIDs) {
		t.Fatalf("release 2's image fetched as %+v, want its layers pulled after an invalid delta: manifest %s, %v", ev, bManifest, bIDs)
	}
	// Only the layers the device lacked were pulled.
	if want := layerSizes(t, f.pair.B, aIDs...); ev.LayerBytes != want {
		t.Errorf("release 2 pulled %d bytes of layers, want %d (those release 1 lacks)", ev.LayerBytes, want)
	}

	sum := sim.stop(t)
	im := sum.Images
	t.Logf("images: %s", im)
	if im.Pulled != 2 || im.ByDelta != 0 || im.Failed != 0 || im.Fallbacks != (simulate.DeltaFallbacks{Invalid: 1}) || im.Saved != 0 {
		t.Errorf("image counters %+v, want two pulls and one invalid delta", *im)
	}
	if sum.UpdatesDone != 2 || sum.UpdatesFailed != 0 {
		t.Errorf("updates done %d, failed %d; want 2 and 0", sum.UpdatesDone, sum.UpdatesFailed)
	}
}

// TestPullImagesDeltaNotSmallerFallsBack: a server that keeps no delta
// above a tiny share of the layers answers 409 delta_not_smaller; the
// device pulls the layers and runs release 2.
func TestPullImagesDeltaNotSmallerFallsBack(t *testing.T) {
	f := newImgFleet(t, "--delta-max-ratio=0.0001")
	a, b := f.push(t, f.pair.A), f.push(t, f.pair.B)
	rel1 := f.release(t, "1", a)
	sim := startImgSim(t, simulate.Config{API: f.srv.URL, ProvisioningKey: f.key, RegistryTransport: f.srv.RegistryTransport()})
	f.runningRelease(t, sim, rel1)
	rel2 := f.release(t, "2", b)
	f.runningRelease(t, sim, rel2)

	got := sim.fetched()
	if len(got) != 2 || got[1].Delta || got[1].Fallback != simulate.FallbackNotSmaller || got[1].DeltaBytes != 0 ||
		!slices.Equal(got[1].DiffIDs, diffIDs(t, f.pair.B)) {
		t.Fatalf("images fetched: %+v, want release 2's pulled after delta_not_smaller", got)
	}
	sum := sim.stop(t)
	im := sum.Images
	if im.Pulled != 2 || im.ByDelta != 0 || im.DeltaBytes != 0 || im.Fallbacks != (simulate.DeltaFallbacks{NotSmaller: 1}) {
		t.Errorf("image counters %+v, want two pulls after one delta_not_smaller", *im)
	}
}

// TestPullImagesRefusedFailsTheUpdate: a registry that refuses the
// device's layer pulls fails its update, as a release that does not start
// does: the service reported failed, a failed update event.
func TestPullImagesRefusedFailsTheUpdate(t *testing.T) {
	f := newImgFleet(t)
	rel1 := f.release(t, "1", f.push(t, f.pair.A))
	var refused atomic.Int64
	sim := startImgSim(t, simulate.Config{API: f.srv.URL, ProvisioningKey: f.key,
		RegistryTransport: refusingBlobs{f.srv.RegistryTransport(), &refused}})
	testutil.Eventually(t, "the device to report release 1 failed", func() error {
		if err := sim.ended(); err != nil {
			return err
		}
		items, _ := f.must(t, 200, "GET", "/v1/orgs/"+f.org+"/devices?running_release_id="+rel1, nil)["items"].([]any)
		if len(items) != 1 {
			return fmt.Errorf("%d devices name release 1; summary %s", len(items), sim.summary())
		}
		st, _ := items[0].(map[string]any)["reported_state"].(map[string]any)
		svcs, _ := st["services"].([]any)
		if len(svcs) != 1 || svcs[0].(map[string]any)["status"] != "failed" {
			return fmt.Errorf("services %v", svcs)
		}
		return nil
	})
	testutil.Eventually(t, "the failed update counted", testutil.Until(func() bool {
		s := sim.summary()
		return s.UpdatesFailed == 1 && s.Images != nil && s.Images.Failed == 1
	}))
	sum := sim.stop(t)
	if sum.UpdatesDone != 0 || sum.Images.Pulled != 0 || len(sim.fetched()) != 0 || refused.Load() == 0 {
		t.Errorf("summary %s after %d refusals, want nothing pulled", sum, refused.Load())
	}
}

// TestPullImagesCommandLine: the image flags of `flock-api simulate` and
// what Validate refuses of them.
func TestPullImagesCommandLine(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"--help"}, app.ExitOK, "-pull-images"},
		{"bad architecture", []string{"--provisioning-key=k", "--pull-images", "--architecture=sparc"}, app.ExitUsage,
			`architecture "sparc": want amd64, arm64, armv7, armv6, i386 or riscv64`},
		{"bad registry address", []string{"--provisioning-key=k", "--pull-images", "--registry-addr=nowhere"}, app.ExitUsage,
			`registry address "nowhere": want host:port`},
	} {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := app.Main(t.Context(), append([]string{"simulate"}, c.args...), &stdout, &stderr, func(string) string { return "" })
			if code != c.code || !strings.Contains(stderr.String(), c.want) {
				t.Errorf("exit %d (want %d), stderr does not say %q:\n%s", code, c.code, c.want, stderr.String())
			}
		})
	}
	ok := simulate.Config{API: "http://127.0.0.1:1", ProvisioningKey: "k", Devices: 1, PullImages: true,
		Architecture: "armv7", RegistryAddr: "127.0.0.1:5000", LayerDir: t.TempDir()}
	if err := ok.Validate(); err != nil {
		t.Errorf("Validate(%+v) = %v", ok, err)
	}
}

// refusingBlobs answers every blob request 403 as the registry-proxy
// refuses a pull.
type refusingBlobs struct {
	rt http.RoundTripper
	n  *atomic.Int64
}

func (r refusingBlobs) RoundTrip(req *http.Request) (*http.Response, error) {
	if !strings.Contains(req.URL.Path, "/blobs/") || strings.Contains(req.URL.Path, "/uploads/") {
		return r.rt.RoundTrip(req)
	}
	// The config blob is a blob too: everything of the image is refused.
	r.n.Add(1)
	body := `{"errors":[{"code":"DENIED","message":"a device pulls only the images of its releases, by digest"}]}`
	return &http.Response{StatusCode: http.StatusForbidden, Status: "403 Forbidden", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)), Request: req}, nil
}

// corruptingProxy serves target's API, flipping a byte in the middle of the
// largest patch of every delta it serves, and counts them.
func corruptingProxy(t *testing.T, target string) (string, *atomic.Int64) {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.URL.Path != "/device/v1/deltas" || resp.StatusCode != http.StatusOK {
			return nil
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		at, err := largestPatch(b)
		if err != nil {
			return err
		}
		b[at] ^= 0x55
		n.Add(1)
		resp.Body = io.NopCloser(bytes.NewReader(b))
		resp.ContentLength = int64(len(b))
		resp.Header.Set("Content-Length", strconv.Itoa(len(b)))
		return nil
	}
	srv := httptest.NewServer(rp)
	t.Cleanup(srv.Close)
	return srv.URL, &n
}

// largestPatch is the offset of the middle byte of the delta's largest
// patch entry.
func largestPatch(delta []byte) (int, error) {
	cr := &offsetReader{r: bytes.NewReader(delta)}
	tr := tar.NewReader(cr)
	at, size := -1, int64(0)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
		// tar.Reader has read the header blocks and nothing of the data.
		if h.Name != imagedelta.IndexName && h.Size > size {
			at, size = int(cr.n+h.Size/2), h.Size
		}
	}
	if at < 0 {
		return 0, errors.New("the delta holds no patch")
	}
	return at, nil
}

type offsetReader struct {
	r io.Reader
	n int64
}

func (o *offsetReader) Read(p []byte) (int, error) {
	n, err := o.r.Read(p)
	o.n += int64(n)
	return n, err
}

// waitLong is testutil.Eventually with a budget of 4 × testutil.Wait.
func waitLong(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(4 * testutil.Wait)
	pause := time.Millisecond
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s: %v", 4*testutil.Wait, what, err)
		}
		time.Sleep(pause)
		pause = min(2*pause, 50*time.Millisecond)
	}
}

func imgFreePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// imgLog logs to the test when it runs verbosely.
func imgLog(t *testing.T) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(imgLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type imgLogWriter struct{ t *testing.T }

func (w imgLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
