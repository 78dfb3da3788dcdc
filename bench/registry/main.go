// Command registry measures image pull throughput through the
// registry-proxy against pulling straight from the registry behind it
// (issue 14: the proxy should keep at least 0.8 of the direct rate).
//
// For each upstream it starts a fresh flock-api (in this process, on a
// fresh database, --dev, all targets) and:
//
//   - distribution: Debian's docker-registry (/usr/bin/docker-registry) on a
//     free loopback port, filesystem storage in a temporary directory,
//     htpasswd auth for the robot flock-api logs in as (as
//     internal/registry/registrytest runs it); flock-api gets --registry-url;
//   - embedded: flock-api's embedded registry under its --data-dir.
//
// It creates an organisation and a fleet through the API as a dev-OIDC user,
// pushes through the proxy, with that user's token, an image of -layers
// layers of -layer-size MiB of random (incompressible) bytes, each an
// uncompressed tar (application/vnd.oci.image.layer.v1.tar, so nothing is
// compressed anywhere and the bench measures transport), registers a device
// with a provisioning key and a final release naming the image, and then
// pulls every layer blob (GET /v2/<repo>/blobs/<digest>) by three paths:
//
//   - direct: from docker-registry, with the robot's basic credentials
//     (distribution only: the embedded registry has no address of its own);
//   - user: through the proxy with a registry token the user got once from
//     /registry/token;
//   - device: the same with the device's registry token (login: its uuid and
//     device access token).
//
// One round pulls all layers once on each path, with -concurrency GETs in
// flight (a queue of the layers shared by that many workers); the paths take
// turns within a round, in an order rotated each round, so the machine's
// drift slows them alike. The first round of each path is a warm-up, not
// counted, in which every blob's sha256 is checked. Beside MB/s (10^6 bytes
// a second, the median over -reps rounds) it reports the CPU time used per
// GiB pulled by this process (the client, and for the proxy paths flock-api
// too) and by docker-registry, from getrusage and /proc. The ratio is
// proxy / direct, per round, medianed.
//
// flock-api gets --http-body-limit above the layer size: its default (1 MiB)
// also bounds the proxy's blob uploads, and a larger layer's push fails
// with 413.
//
//	go run ./bench/registry [-layers 4] [-layer-size 64] [-reps 9] [-concurrency 1,4]
//	    [-upstreams distribution,embedded] [-paths direct,user,device] [-cache-size 8GiB] [-cpuprofile FILE]
//
// -cache-size is the proxy's --registry-cache-size. The warm-up round
// fills the cache, so with it on the measured proxy rounds in front of
// docker-registry are served from the proxy's disk (after a HEAD to the
// registry each); -cache-size 0 measures the forwarding path.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ed25519"
	crand "crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/bench/internal/benchapp"
	"github.com/flock-io/flock-api/bench/internal/benchdb"
	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/testutil/launch"
)

// publicHost is flock-api's public host: image references and the token
// realm name it, and this program's dialer sends it to the process.
const (
	publicHost = "flock.bench"
	publicURL  = "http://" + publicHost
)

// The robot's credentials on docker-registry (htpasswd), as registrytest's.
const (
	robotUser     = "flock-robot"
	robotPassword = "robot-secret"
	robotHash     = "$2a$04$ggnRPlYEFPME6cn0/hrFw.0F41b/zXyIvKpkt0yXp8sUsIEB8YJSu" // bcrypt, cost 4
)

const distributionBinary = "/usr/bin/docker-registry"

type options struct {
	admin       string
	layers      int
	layerMiB    int
	reps        int
	concurrency []int
	upstreams   []string
	paths       []string
	keep        bool
	cacheSize   string
}

func main() {
	var o options
	flag.StringVar(&o.admin, "database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create each run's database on")
	flag.IntVar(&o.layers, "layers", 4, "layers in the image")
	flag.IntVar(&o.layerMiB, "layer-size", 64, "MiB of random bytes in each layer")
	flag.IntVar(&o.reps, "reps", 9, "measured rounds per concurrency (after one warm-up round)")
	conc := flag.String("concurrency", "1,4", "blob GETs in flight, comma list")
	ups := flag.String("upstreams", "distribution,embedded", "registries behind the proxy, comma list")
	paths := flag.String("paths", "direct,user,device", "pull paths, comma list (direct only with distribution)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the measured rounds (client and flock-api) here")
	flag.StringVar(&o.cacheSize, "cache-size", "8GiB", "the proxy's --registry-cache-size; 0 forwards every pull to the registry")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (layers, registry storage)")
	flag.Parse()
	for _, s := range strings.Split(*conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fail("-concurrency: %q is not a positive number", s)
		}
		o.concurrency = append(o.concurrency, n)
	}
	o.upstreams = splitList(*ups, "distribution", "embedded")
	o.paths = splitList(*paths, "direct", "user", "device")
	if o.layers < 1 || o.layerMiB < 1 || o.reps < 1 {
		fail("-layers, -layer-size and -reps must be positive")
	}
	var prof *os.File
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fail("%v", err)
		}
		prof = f
	}
	if err := run(o, prof); err != nil {
		fail("%v", err)
	}
}

func splitList(s string, allowed ...string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		v = strings.TrimSpace(v)
		if !slices.Contains(allowed, v) {
			fail("%q is not one of %s", v, strings.Join(allowed, ", "))
		}
		out = append(out, v)
	}
	return out
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench/registry: "+format+"\n", args...)
	os.Exit(1)
}

// result is one path's measurements at one concurrency.
type result struct {
	upstream, path string
	concurrency    int
	mbps           []float64 // per round
	selfCPU        []float64 // s per GiB, this process
	regCPU         []float64 // s per GiB, docker-registry
	ratio          []float64 // per round, against direct
}

func run(o options, prof *os.File) error {
	tmp, err := os.MkdirTemp("", "flock-bench-registry-")
	if err != nil {
		return err
	}
	if o.keep {
		fmt.Fprintf(os.Stderr, "temporary directory: %s\n", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	start := time.Now()
	layers, err := makeLayers(filepath.Join(tmp, "layers"), o.layers, int64(o.layerMiB)<<20)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "%d layers of %d MiB written in %s\n", o.layers, o.layerMiB, time.Since(start).Round(time.Millisecond))

	load0 := loadAvg()
	var results []*result
	profiling := false
	for _, up := range o.upstreams {
		paths := slices.Clone(o.paths)
		if up == "embedded" {
			paths = slices.DeleteFunc(paths, func(p string) bool { return p == "direct" })
		}
		if len(paths) == 0 {
			continue
		}
		env, err := setUp(o, up, filepath.Join(tmp, up), layers)
		if err != nil {
			return fmt.Errorf("%s: %w", up, err)
		}
		if prof != nil && !profiling {
			if err := pprof.StartCPUProfile(prof); err != nil {
				env.close()
				return err
			}
			profiling = true
		}
		rs, err := env.measure(o, paths)
		env.close()
		if err != nil {
			return fmt.Errorf("%s: %w", up, err)
		}
		results = append(results, rs...)
	}
	if profiling {
		pprof.StopCPUProfile()
		prof.Close()
	}
	printTable(o, results)
	fmt.Printf("\n%d CPUs; load average %s at the start of the measurements, %s at the end\n", runtime.NumCPU(), load0, loadAvg())
	return nil
}

// loadAvg is the 1-minute load average: others' work on the machine.
func loadAvg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(raw)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

// --- layers -------------------------------------------------------------

// fileLayer is an uncompressed tar layer in a file: its digest is its diff
// id, and it is pushed as it is.
type fileLayer struct {
	path   string
	digest v1.Hash
	size   int64
}

func (l *fileLayer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) { return os.Open(l.path) }
func (l *fileLayer) Size() (int64, error)                 { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }

// makeLayers writes n tars, each holding one file of size random bytes.
func makeLayers(dir string, n int, size int64) ([]*fileLayer, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var seed [32]byte
	crand.Read(seed[:])
	rnd := mrand.NewChaCha8(seed)
	var out []*fileLayer
	for i := range n {
		path := filepath.Join(dir, fmt.Sprintf("layer-%d.tar", i))
		f, err := os.Create(path)
		if err != nil {
			return nil, err
		}
		h := sha256.New()
		cw := &countWriter{w: io.MultiWriter(f, h)}
		tw := tar.NewWriter(cw)
		err = tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data/random-%d.bin", i), Mode: 0o644, Size: size,
			Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)})
		if err == nil {
			_, err = io.CopyN(tw, rnd, size)
		}
		if err == nil {
			err = tw.Close()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("write %s: %w", path, err)
		}
		out = append(out, &fileLayer{path: path, size: cw.n,
			digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}})
	}
	return out, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// image is an OCI image of the layers for linux/amd64.
func image(layers []*fileLayer) (v1.Image, error) {
	ls := make([]v1.Layer, len(layers))
	for i, l := range layers {
		ls[i] = l
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		return nil, err
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	return mutate.ConfigFile(img, cf)
}

// --- docker-registry ----------------------------------------------------

type distribution struct {
	url    string
	cmd    *exec.Cmd
	exited chan struct{}
	out    *lockedBuffer
}

// startDistribution runs docker-registry on a free loopback port, storing
// under dir, as registrytest.Distribution does.
func startDistribution(dir string) (*distribution, error) {
	if _, err := os.Stat(distributionBinary); err != nil {
		return nil, fmt.Errorf("%s is missing (scripts/services.sh registry installs Debian's docker-registry): %w", distributionBinary, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(robotUser+":"+robotHash+"\n"), 0o600); err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 { // the free port may be taken between probe and bind
		addr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: flock-bench-secret
auth:
  htpasswd:
    realm: flock-bench
    path: %s
`, filepath.Join(dir, "storage"), addr, filepath.Join(dir, "htpasswd"))
		cfgPath := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfgPath, []byte(config), 0o600); err != nil {
			return nil, err
		}
		d := &distribution{url: "http://" + addr, exited: make(chan struct{}), out: &lockedBuffer{}}
		d.cmd = exec.Command(distributionBinary, "serve", cfgPath)
		d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
		if err := d.cmd.Start(); err != nil {
			return nil, err
		}
		go func() { d.cmd.Wait(); close(d.exited) }()
		if err := waitUp(d.url, d.exited, 10*time.Second); err != nil {
			d.stop()
			lastErr = fmt.Errorf("%w\n%s", err, d.out.String())
			continue
		}
		return d, nil
	}
	return nil, fmt.Errorf("start docker-registry: %w", lastErr)
}

func (d *distribution) stop() {
	d.cmd.Process.Kill()
	<-d.exited
}

// cpu is the CPU time docker-registry has used.
func (d *distribution) cpu() time.Duration {
	if d == nil {
		return 0
	}
	return procCPU(d.cmd.Process.Pid)
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func waitUp(url string, exited <-chan struct{}, within time.Duration) error {
	deadline := time.Now().Add(within)
	c := &http.Client{Timeout: time.Second}
	for {
		resp, err := c.Get(url + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-exited:
			return errors.New("docker-registry exited")
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("docker-registry did not answer on %s within %s (last error %v)", url, within, err)
		}
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// procCPU is a process's user and system CPU time from /proc.
func procCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) in parens.
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// --- the environment ----------------------------------------------------

type env struct {
	upstream string
	dist     *distribution
	proc     *launch.Process
	dbDone   func()
	api      *http.Client
	base     string // flock-api's real URL
	repo     string
	layers   []*fileLayer
	// Tokens for the proxy paths, and who they are fetched as.
	userToken       string
	deviceID        uuid.UUID
	deviceToken     string
	regTokens       map[string]string
	regTokenFetched map[string]time.Time
	clients         map[string]*http.Client
	closers         []func()
}

func (e *env) close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
}

// dialer sends the public host to flock-api's real address, as DNS would
// in a deployment, so the token realm and image references work.
func dialer(real string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == publicHost+":80" || addr == publicHost {
			addr = real
		}
		return d.DialContext(ctx, network, addr)
	}
}

func newTransport(real string) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = dialer(real)
	tr.MaxIdleConnsPerHost = 16
	return tr
}

func setUp(o options, upstream, dir string, layers []*fileLayer) (_ *env, err error) {
	ctx := context.Background()
	e := &env{upstream: upstream, layers: layers, regTokens: map[string]string{}, regTokenFetched: map[string]time.Time{},
		clients: map[string]*http.Client{}}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// The server's body limit (--http-body-limit, 1 MiB by default) applies
	// to the proxy's blob uploads too: a layer over it is refused with 413.
	args := []string{"--dev", "--target=all", "--public-url=" + publicURL, "--data-dir=" + filepath.Join(dir, "flock-data"),
		fmt.Sprintf("--http-body-limit=%dMiB", o.layerMiB+16), "--registry-cache-size=" + o.cacheSize}
	if upstream == "distribution" {
		d, err := startDistribution(filepath.Join(dir, "distribution"))
		if err != nil {
			return nil, err
		}
		e.dist = d
		e.closers = append(e.closers, d.stop)
		args = append(args, "--registry-url="+d.url, "--registry-username="+robotUser, "--registry-password="+robotPassword)
	}
	dbURL, pool, done, err := benchdb.Migrated(ctx, o.admin)
	if err != nil {
		return nil, err
	}
	e.closers = append(e.closers, done)
	var started atomic.Bool // before, /readyz polls log 503s
	proc, err := launch.Start(append([]string{"--database-url=" + dbURL}, args...), func(line string) {
		if started.Load() && (strings.Contains(line, `"level":"ERROR"`) || strings.Contains(line, `"level":"WARN"`)) {
			fmt.Fprintln(os.Stderr, line)
		}
	})
	if err != nil {
		return nil, err
	}
	started.Store(true)
	e.proc = proc
	e.base = proc.URL
	e.closers = append(e.closers, func() { proc.Stop(30 * time.Second) })
	real := strings.TrimPrefix(proc.URL, "http://")
	e.api = &http.Client{Transport: newTransport(real)}
	e.clients["user"] = &http.Client{Transport: newTransport(real)}
	e.clients["device"] = &http.Client{Transport: newTransport(real)}
	if e.dist != nil {
		e.clients["direct"] = &http.Client{Transport: newTransport(real)}
	}

	if e.userToken, err = benchapp.Token(ctx, pool, publicURL); err != nil {
		return nil, err
	}
	org, err := e.post("/v1/orgs", e.userToken, map[string]any{"name": "bench"})
	if err != nil {
		return nil, err
	}
	fleet, err := e.post("/v1/orgs/"+str(org["id"])+"/fleets", e.userToken, map[string]any{"name": "pull", "architecture": "amd64"})
	if err != nil {
		return nil, err
	}
	e.repo = str(org["slug"]) + "/" + str(fleet["slug"]) + "/app"

	start := time.Now()
	img, err := image(layers)
	if err != nil {
		return nil, err
	}
	ref, err := name.NewTag(publicHost+"/"+e.repo+":bench", name.Insecure)
	if err != nil {
		return nil, err
	}
	pushTr := newTransport(real)
	err = remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "bench", Password: e.userToken}), remote.WithTransport(pushTr))
	pushTr.CloseIdleConnections()
	if err != nil {
		return nil, fmt.Errorf("push through the proxy: %w", err)
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "%s: pushed %s@%s through the proxy in %s\n", upstream, e.repo, digest, time.Since(start).Round(time.Millisecond))

	// A device of the fleet, and a release naming the image, which becomes
	// its target.
	pk, err := e.post("/v1/fleets/"+str(fleet["id"])+"/provisioning-keys", e.userToken, map[string]any{"name": "bench"})
	if err != nil {
		return nil, err
	}
	pub, priv, _ := ed25519.GenerateKey(crand.Reader)
	e.deviceID = uuid.New()
	if _, err := e.post("/device/v1/register", "", map[string]any{"provisioning_key": str(pk["secret"]), "uuid": e.deviceID.String(),
		"public_key": base64.RawURLEncoding.EncodeToString(pub), "name": "bench-device", "device_type": "generic-amd64"}); err != nil {
		return nil, err
	}
	if _, err := e.post("/v1/fleets/"+str(fleet["id"])+"/releases", e.userToken, map[string]any{"status": "final", "services": []any{
		map[string]any{"name": "app", "images": map[string]any{"amd64": map[string]any{"image": e.repo, "digest": digest.String()}}}}}); err != nil {
		return nil, err
	}
	assertion, err := devicetoken.SignAssertion(priv, e.deviceID, app.TokenEndpoint(publicURL), time.Minute)
	if err != nil {
		return nil, err
	}
	tok, err := e.post("/device/v1/token", "", map[string]any{"assertion": assertion})
	if err != nil {
		return nil, err
	}
	e.deviceToken = str(tok["access_token"])
	return e, nil
}

func str(v any) string { s, _ := v.(string); return s }

func (e *env) post(path, token string, body any) (map[string]any, error) {
	raw, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPost, e.base+path, bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.api.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, b)
	}
	var out map[string]any
	if len(b) > 0 {
		if err := json.Unmarshal(b, &out); err != nil {
			return nil, fmt.Errorf("POST %s: %w", path, err)
		}
	}
	return out, nil
}

// registryToken is a proxy path's registry token, fetched from the token
// endpoint once and again when it is near its five minutes.
func (e *env) registryToken(path string) (string, error) {
	if t, ok := e.regTokens[path]; ok && time.Since(e.regTokenFetched[path]) < 3*time.Minute {
		return t, nil
	}
	user, pass := "bench", e.userToken
	if path == "device" {
		user, pass = e.deviceID.String(), e.deviceToken
	}
	q := url.Values{"service": {publicHost}, "scope": {"repository:" + e.repo + ":pull"}}
	req, _ := http.NewRequest(http.MethodGet, publicURL+"/registry/token?"+q.Encode(), nil)
	req.SetBasicAuth(user, pass)
	resp, err := e.clients[path].Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out struct {
		Token string `json:"token"`
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return "", fmt.Errorf("%s registry token: %d %s", path, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Token == "" {
		return "", fmt.Errorf("%s registry token: %v", path, err)
	}
	e.regTokens[path], e.regTokenFetched[path] = out.Token, time.Now()
	return out.Token, nil
}

// --- pulling ------------------------------------------------------------

const readBuffer = 256 << 10

// pull GETs every layer blob on path with conc requests in flight and
// returns the bytes read; verify checks each blob's digest.
func (e *env) pull(path string, conc int, verify bool) (int64, error) {
	base, auth := publicURL, ""
	switch path {
	case "direct":
		base = e.dist.url
		auth = "Basic " + base64.StdEncoding.EncodeToString([]byte(robotUser+":"+robotPassword))
	default:
		tok, err := e.registryToken(path)
		if err != nil {
			return 0, err
		}
		auth = "Bearer " + tok
	}
	client := e.clients[path]
	queue := make(chan *fileLayer, len(e.layers))
	for _, l := range e.layers {
		queue <- l
	}
	close(queue)
	var (
		mu    sync.Mutex
		total int64
		first error
		wg    sync.WaitGroup
	)
	for range min(conc, len(e.layers)) {
		wg.Go(func() {
			buf := make([]byte, readBuffer)
			for l := range queue {
				n, err := getBlob(client, base+"/v2/"+e.repo+"/blobs/"+l.digest.String(), auth, buf, verify, l)
				mu.Lock()
				total += n
				if err != nil && first == nil {
					first = fmt.Errorf("%s: %w", path, err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return total, first
}

func getBlob(client *http.Client, u, auth string, buf []byte, verify bool, l *fileLayer) (int64, error) {
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", auth)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return 0, fmt.Errorf("GET %s: %d %s", u, resp.StatusCode, b)
	}
	var h hash.Hash
	if verify {
		h = sha256.New()
	}
	var n int64
	for {
		m, err := resp.Body.Read(buf)
		n += int64(m)
		if h != nil {
			h.Write(buf[:m])
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, err
		}
	}
	if n != l.size {
		return n, fmt.Errorf("GET %s: %d bytes, want %d", u, n, l.size)
	}
	if h != nil && hex.EncodeToString(h.Sum(nil)) != l.digest.Hex {
		return n, fmt.Errorf("GET %s: content does not match its digest", u)
	}
	return n, nil
}

func (e *env) measure(o options, paths []string) ([]*result, error) {
	var out []*result
	for _, conc := range o.concurrency {
		byPath := map[string]*result{}
		for _, p := range paths {
			r := &result{upstream: e.upstream, path: p, concurrency: conc}
			byPath[p] = r
			out = append(out, r)
		}
		// Warm-up, checked: caches, connections, page cache.
		for _, p := range paths {
			if _, err := e.pull(p, conc, true); err != nil {
				return nil, err
			}
		}
		for rep := range o.reps {
			order := slices.Clone(paths)
			k := rep % len(order)
			order = append(order[k:], order[:k]...)
			rates := map[string]float64{}
			for _, p := range order {
				if _, err := e.registryToken(p); p != "direct" && err != nil {
					return nil, err
				}
				c0, r0, t0 := selfCPU(), e.dist.cpu(), time.Now()
				n, err := e.pull(p, conc, false)
				wall := time.Since(t0)
				c1, r1 := selfCPU(), e.dist.cpu()
				if err != nil {
					return nil, err
				}
				gib := float64(n) / (1 << 30)
				r := byPath[p]
				rates[p] = float64(n) / 1e6 / wall.Seconds()
				r.mbps = append(r.mbps, rates[p])
				r.selfCPU = append(r.selfCPU, (c1-c0).Seconds()/gib)
				r.regCPU = append(r.regCPU, (r1-r0).Seconds()/gib)
			}
			if d, ok := rates["direct"]; ok {
				for p, v := range rates {
					if p != "direct" {
						byPath[p].ratio = append(byPath[p].ratio, v/d)
					}
				}
			}
			fmt.Fprintf(os.Stderr, "%s c=%d round %d:", e.upstream, conc, rep+1)
			for _, p := range paths {
				fmt.Fprintf(os.Stderr, " %s %.0f MB/s", p, rates[p])
			}
			fmt.Fprintln(os.Stderr)
		}
	}
	return out, nil
}

// --- report -------------------------------------------------------------

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func printTable(o options, results []*result) {
	cache := "the proxy's blob cache off (every pull forwarded to the registry)"
	if o.cacheSize != "0" {
		cache = "the proxy's blob cache on (" + o.cacheSize + "; the warm-up filled it, so measured rounds through docker-registry are served from it)"
	}
	fmt.Printf("\n%d layers × %d MiB (uncompressed tar of random bytes), %d rounds after a warm-up; MB/s = 10^6 bytes/s, median (min–max); %s\n\n",
		o.layers, o.layerMiB, o.reps, cache)
	fmt.Println("| upstream | path | GETs in flight | MB/s | proxy / direct | CPU s/GiB, bench process | CPU s/GiB, docker-registry |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, r := range results {
		ratio := "—"
		if len(r.ratio) > 0 {
			ratio = fmt.Sprintf("%.2f %s", median(r.ratio), map[bool]string{true: "✓", false: "✗"}[median(r.ratio) >= 0.8])
		}
		reg := "—"
		if r.upstream == "distribution" {
			reg = fmt.Sprintf("%.2f", median(r.regCPU))
		}
		fmt.Printf("| %s | %s | %d | %.0f (%.0f–%.0f) | %s | %.2f | %s |\n", r.upstream, r.path, r.concurrency,
			median(r.mbps), slices.Min(r.mbps), slices.Max(r.mbps), ratio, median(r.selfCPU), reg)
	}
}
