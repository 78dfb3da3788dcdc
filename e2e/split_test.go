package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/flock-io/flock-api/gen/client"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/kv/kvtest"
	"github.com/flock-io/flock-api/internal/livestate"
	"github.com/flock-io/flock-api/internal/simulate"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

// TestSplitProcesses runs one deployment as several processes, as
// production does: `flock-api dev-kafka` standing in for the Kafka cluster,
// a three-node Redis Cluster for live state, PostgreSQL, and the api and
// ingester targets as separate processes that share only those. Devices
// register through the api and connect to the ingester's broker; the test
// sees them online through the api (the ingester wrote PostgreSQL and the
// Redis Cluster), then creates a release and sees every device get its
// target nudge (the api published it to Kafka, the ingester relayed it
// over MQTT) and report the release running.
func TestSplitProcesses(t *testing.T) {
	bin := build(t)
	dbURL := pgtest.EmptyURL(t)
	if out, err := exec.Command(bin, "migrate", "up", "--database-url", dbURL).CombinedOutput(); err != nil {
		t.Fatalf("migrate up: %v\n%s", err, out)
	}
	issuer, mint := externalIssuer(t, dbURL)
	redisCluster := kvtest.StartRedisCluster(t, 3)

	kafka := startProcess(t, "dev-kafka", bin, []string{"dev-kafka", "--listen", "127.0.0.1:0", "--log-format=json"}, nil)
	brokers := kafka.waitStdout(t)

	// What the two targets share: the database (and in it the device-token
	// signing keys), the public URL (the issuer of device tokens and the
	// audience of device assertions), the user-token issuer, Redis and
	// Kafka. Nothing else connects them.
	shared := []string{
		"FLOCK_DATABASE_URL=" + dbURL,
		"FLOCK_PUBLIC_URL=http://flock-split.test",
		"FLOCK_OIDC_ISSUER=" + issuer,
		"FLOCK_OIDC_AUDIENCE=flock-e2e",
		"FLOCK_REDIS_URL=" + redisCluster.URL,
		"FLOCK_KAFKA_BROKERS=" + brokers,
		"FLOCK_LOG_FORMAT=json",
	}
	ingester := startProcess(t, "ingester", bin, []string{"--target=ingester", "--http-addr=127.0.0.1:0", "--mqtt-listen=127.0.0.1:0",
		"--data-dir=" + t.TempDir()}, shared)
	ingesterHTTP := ingester.waitLog(t, "http server listening", "addr")
	brokerAddr := ingester.waitLog(t, "mqtt broker listening", "addr")
	// The api runs no broker: it tells registering devices the ingester's.
	// It also serves the registry-proxy, through which the release's image
	// is pushed into its (embedded) registry.
	api := startProcess(t, "api", bin, []string{"--target=api,registry-proxy", "--http-addr=127.0.0.1:0", "--data-dir=" + t.TempDir()},
		append(shared, "FLOCK_MQTT_PUBLIC_URL=mqtt://"+brokerAddr))
	apiAddr := api.waitLog(t, "http server listening", "addr")
	apiBase := "http://" + apiAddr
	waitReady(t, ingester, "http://"+ingesterHTTP)
	waitReady(t, api, apiBase)
	for _, p := range []*process{ingester, api} {
		for _, concern := range []string{"live device state", "message bus"} {
			if engine := p.waitStoreEngine(t, concern); engine.Mode != "external" {
				t.Errorf("%s: %s runs %s (%s), want the shared external engine", p.name, concern, engine.Engine, engine.Mode)
			}
		}
	}

	ctx := t.Context()
	token := mint("ops@example.com")
	c, err := client.NewClientWithResponses(apiBase, client.WithRequestEditorFn(func(_ context.Context, r *http.Request) error {
		r.Header.Set("Authorization", "Bearer "+token)
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	org, err := c.OrgCreateWithResponse(ctx, nil, client.OrgCreateJSONRequestBody{Name: "Split"})
	if err != nil || org.JSON201 == nil {
		t.Fatalf("create org: %v %d %s", err, org.StatusCode(), org.Body)
	}
	fleet, err := c.FleetCreateWithResponse(ctx, org.JSON201.Id, nil, client.FleetCreateJSONRequestBody{Name: "sensors", Architecture: client.Amd64})
	if err != nil || fleet.JSON201 == nil {
		t.Fatalf("create fleet: %v %d %s", err, fleet.StatusCode(), fleet.Body)
	}
	key, err := c.ProvisioningKeyCreateWithResponse(ctx, fleet.JSON201.Id, client.ProvisioningKeyCreateJSONRequestBody{Name: "split"})
	if err != nil || key.JSON201 == nil {
		t.Fatalf("create provisioning key: %v %d %s", err, key.StatusCode(), key.Body)
	}

	// Simulated devices: each registers through the api, gets a token from
	// it, and connects to the broker the registration names (the
	// ingester's). Two devices, so the api's device list reads live state
	// from two keys, which lie in different hash slots of the cluster.
	const devices = 2
	var last atomic.Pointer[simulate.Summary]
	simCtx, stopSim := context.WithCancel(context.Background())
	simDone := make(chan error, 1)
	go func() {
		_, err := simulate.Run(simCtx, simulate.Config{
			API: apiBase, ProvisioningKey: key.JSON201.Secret, Devices: devices, Rate: 0,
			SummaryEvery: 100 * time.Millisecond, Name: "split",
			OnSummary: func(s simulate.Summary) { last.Store(&s) },
			Log:       slog.New(slog.DiscardHandler),
		})
		simDone <- err
	}()
	simStopped := false
	stopSimulation := func() {
		if simStopped {
			return
		}
		simStopped = true
		stopSim()
		if err := <-simDone; err != nil {
			t.Errorf("simulate: %v", err)
		}
	}
	t.Cleanup(stopSimulation)

	listDevices := func() ([]client.Device, error) {
		resp, err := c.DeviceListWithResponse(ctx, org.JSON201.Id, &client.DeviceListParams{})
		if err != nil {
			return nil, err
		}
		if resp.JSON200 == nil {
			return nil, fmt.Errorf("device list: %d %s", resp.StatusCode(), resp.Body)
		}
		return resp.JSON200.Items, nil
	}
	// Online comes from PostgreSQL and the reported state from the Redis
	// Cluster, both written by the ingester and read by the api.
	testutil.Eventually(t, "both devices online with a reported state, as the api sees them", func() error {
		select {
		case err := <-simDone:
			simDone <- err
			t.Fatalf("simulate ended early: %v", err)
		default:
		}
		items, err := listDevices()
		if err != nil {
			return err
		}
		if len(items) != devices {
			return fmt.Errorf("%d devices registered", len(items))
		}
		for _, d := range items {
			if !d.Online || d.ReportedState == nil {
				return fmt.Errorf("device %s: online %v, reported state %v", d.Id, d.Online, d.ReportedState != nil)
			}
		}
		return nil
	})
	items, err := listDevices()
	if err != nil {
		t.Fatal(err)
	}
	live, err := kv.NewRedis(ctx, redisCluster.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	for _, d := range items {
		got, err := c.DeviceGetWithResponse(ctx, d.Id)
		if err != nil || got.JSON200 == nil || !got.JSON200.Online {
			t.Fatalf("GET device %s: %v %d %s", d.Id, err, got.StatusCode(), got.Body)
		}
		// The state the api showed lives in the Redis Cluster.
		if _, err := live.Get(ctx, livestate.StateKey(d.Id)); err != nil {
			t.Errorf("device %s: its live state in the Redis Cluster: %v", d.Id, err)
		}
	}

	// A final release on a fleet that tracks its latest: the api nudges
	// every device through Kafka, the ingester relays the nudges over MQTT,
	// each device fetches its target state from the api and reports the
	// release running over MQTT, and the ingester writes that to Redis.
	// Nothing before the release changes a target, so nothing else nudges;
	// and the devices (publishing at rate 0, connected throughout) fetch
	// their target state only when connecting or nudged, so the release
	// reaches them only through the nudge.
	image, digest := pushImage(t, apiAddr, "flock-split.test", token, org.JSON201.Slug+"/"+fleet.JSON201.Slug+"/app")
	final := client.ReleaseCreateStatusFinal
	version := "1.0"
	release, err := c.ReleaseCreateWithResponse(ctx, fleet.JSON201.Id, nil, client.ReleaseCreateJSONRequestBody{
		Version: &version, Status: &final,
		Services: []client.ReleaseService{{Name: "app", Images: struct {
			Amd64   *client.ServiceImage `json:"amd64,omitempty"`
			Arm64   *client.ServiceImage `json:"arm64,omitempty"`
			Armv6   *client.ServiceImage `json:"armv6,omitempty"`
			Armv7   *client.ServiceImage `json:"armv7,omitempty"`
			I386    *client.ServiceImage `json:"i386,omitempty"`
			Riscv64 *client.ServiceImage `json:"riscv64,omitempty"`
		}{Amd64: &client.ServiceImage{Image: image + ":1.0", Digest: digest}}}},
	})
	if err != nil || release.JSON201 == nil {
		t.Fatalf("create release: %v %d %s", err, release.StatusCode(), release.Body)
	}
	releaseID := release.JSON201.Id
	testutil.Eventually(t, "every device to get its nudge and report the release running", func() error {
		s := last.Load()
		if s == nil || s.NudgesReceived < devices {
			return fmt.Errorf("simulated devices got %d nudges", nudges(s))
		}
		items, err := listDevices()
		if err != nil {
			return err
		}
		for _, d := range items {
			if d.ReportedState == nil || d.ReportedState.RunningReleaseId == nil || *d.ReportedState.RunningReleaseId != releaseID {
				return fmt.Errorf("device %s reports running %v, want %s", d.Id, runningRelease(d), releaseID)
			}
		}
		return nil
	})

	// The devices disconnect (their wills say offline): that too reaches
	// the api through the ingester.
	stopSimulation()
	testutil.Eventually(t, "the devices to show offline after they disconnect", func() error {
		items, err := listDevices()
		if err != nil {
			return err
		}
		for _, d := range items {
			if d.Online {
				return fmt.Errorf("device %s still online", d.Id)
			}
		}
		return nil
	})

	for _, p := range []*process{api, ingester, kafka} {
		p.stop(t)
	}
}

// pushImage pushes a small random linux/amd64 image to repo through the
// registry-proxy of the process listening on addr, whose public URL's host
// is registryHost (no port: 80), logged in with token, and returns the
// image as releases name it (registryHost/repo) and its digest. The host
// resolves to addr, as DNS would in a deployment, so the token flow (its
// realm is on the public URL) reaches the process too.
func pushImage(t *testing.T, addr, registryHost, token, repo string) (string, string) {
	t.Helper()
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(registryHost+"/"+repo+":1.0", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, a string) (net.Conn, error) {
		if a == net.JoinHostPort(registryHost, "80") {
			a = addr
		}
		return dial(ctx, network, a)
	}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "flock", Password: token}),
		remote.WithTransport(tr), remote.WithContext(t.Context())); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return registryHost + "/" + repo, d.String()
}

func nudges(s *simulate.Summary) int64 {
	if s == nil {
		return 0
	}
	return s.NudgesReceived
}

func runningRelease(d client.Device) string {
	if d.ReportedState == nil || d.ReportedState.RunningReleaseId == nil {
		return "nothing"
	}
	return d.ReportedState.RunningReleaseId.String()
}

// process is a flock-api command run by a test: its stderr (the log) and
// stdout are collected line by line, and it is killed when the test ends
// unless it was stopped before.
type process struct {
	name   string
	cmd    *exec.Cmd
	log    logLines
	stdout logLines
	exited chan struct{}
	err    error // cmd.Wait's, once exited is closed
}

// startProcess runs bin with args and, for environment, the test's
// environment without FLOCK_* variables (so a developer's settings do not
// leak in) plus env.
func startProcess(t *testing.T, name, bin string, args, env []string) *process {
	t.Helper()
	p := &process{name: name, cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLOCK_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	// The readers end when the process closes its pipes; Wait may only run
	// after they are done reading.
	var readers sync.WaitGroup
	collect := func(r io.Reader, into *logLines) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			into.add(sc.Text())
		}
		_, _ = io.Copy(io.Discard, r)
	}
	readers.Go(func() { collect(stderr, &p.log) })
	readers.Go(func() { collect(stdout, &p.stdout) })
	go func() {
		readers.Wait()
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", p.name, strings.Join(p.log.all(), "\n"))
		}
	})
	return p
}

// failIfExited stops the test when the process has ended.
func (p *process) failIfExited(t *testing.T, waiting string) {
	t.Helper()
	select {
	case <-p.exited:
		t.Fatalf("%s exited (%v) while waiting for %s:\n%s", p.name, p.err, waiting, strings.Join(p.log.all(), "\n"))
	default:
	}
}

// waitStdout returns the first line the process prints on stdout.
func (p *process) waitStdout(t *testing.T) string {
	t.Helper()
	var line string
	testutil.Eventually(t, p.name+" to print its address", func() error {
		if out := p.stdout.all(); len(out) > 0 {
			line = strings.TrimSpace(out[0])
			return nil
		}
		p.failIfExited(t, "its address")
		return errors.New("nothing printed yet")
	})
	return line
}

// waitLog returns the string attribute attr of the first JSON log record
// whose message is msg.
func (p *process) waitLog(t *testing.T, msg, attr string) string {
	t.Helper()
	var val string
	testutil.Eventually(t, fmt.Sprintf("%s to log %q", p.name, msg), func() error {
		for _, line := range p.log.all() {
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
				if v, ok := rec[attr].(string); ok && v != "" {
					val = v
					return nil
				}
			}
		}
		p.failIfExited(t, fmt.Sprintf("log %q", msg))
		return errors.New("not logged yet")
	})
	return val
}

type storeEngine struct{ Engine, Mode string }

// waitStoreEngine returns what the process's start-up line says of concern.
func (p *process) waitStoreEngine(t *testing.T, concern string) storeEngine {
	t.Helper()
	var e storeEngine
	testutil.Eventually(t, fmt.Sprintf("%s to log its %s engine", p.name, concern), func() error {
		for _, line := range p.log.all() {
			var rec struct{ Msg, Concern, Engine, Mode string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "store engine" && rec.Concern == concern {
				e = storeEngine{rec.Engine, rec.Mode}
				return nil
			}
		}
		p.failIfExited(t, concern)
		return errors.New("not logged yet")
	})
	return e
}

// waitReady waits for /readyz to answer 200.
func waitReady(t *testing.T, p *process, base string) {
	t.Helper()
	testutil.Eventually(t, p.name+" to be ready", func() error {
		p.failIfExited(t, "readiness")
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/readyz = %d %s", resp.StatusCode, b)
		}
		return nil
	})
}

// stop sends SIGTERM and checks the process exits 0.
func (p *process) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", p.name, err)
	}
	testutil.Eventually(t, p.name+" to exit after SIGTERM", func() error {
		select {
		case <-p.exited:
			return nil
		default:
			return errors.New("still running")
		}
	})
	if p.err != nil {
		t.Errorf("%s exit after SIGTERM: %v\n%s", p.name, p.err, strings.Join(p.log.all(), "\n"))
	}
}
