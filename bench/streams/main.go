// Command streams measures the live streams: -clients concurrent SSE
// clients (spread evenly over -orgs organisations, each with an API key)
// on flock-api while devices change state at -rate events/s.
//
// With -source mqtt (the default) the state changes come from devices: each
// organisation gets a fleet and -devices devices, which register with a
// provisioning key and their own Ed25519 key and trade a signed assertion
// for a device token (the REST calls internal/simulate's devices make; its
// Run owns its devices' connections and publishes its own mix, so only its
// Payloads are used here), then connect to the embedded broker over MQTT v5
// from a second child process. Each device reports one state before
// anything is measured (a device that changes state has reported before).
// Each change is then a reported state (the simulator's payload,
// schema-valid) published at QoS 1 by the device's own connection, through
// the broker, the ingester (schema check, KV, PostgreSQL, Kafka) and the
// stream hub of the same process, which runs the api and ingester targets.
// The latency clock starts just before the MQTT publish: the time rides in
// the state's os_version ("... bench-pub-<unix nanoseconds>"), which the
// client reads from the event's data. With
// -source kafka the records are put straight on flock.device.state.v1
// (where the ingester puts a device's report) for the api target alone, and
// the latency starts there.
//
// It reports the events delivered per second against the number the
// clients should receive, the latency from publication to the client
// reading it (p50/p99/max), and the memory per idle stream (the server's
// heap and stack after GC, before and after the streams open, divided by
// their number; the devices are connected before either). Then the same clients connect to a bare loop
// in the same process (raw sockets, no HTTP stack, no auth, no filter: for
// each event, write the same bytes to the sockets of its organisation)
// fed the same events at the same rate: the physical limit of this machine.
//
// The clients and the devices run in child processes (this program,
// re-executed), so the server's memory is measured alone and their CPU is
// not counted as the server's.
//
// The file limit here is 20,000 per process, and the server's process holds
// its side of every device's MQTT connection besides its side of the
// streams: 10 devices per organisation (10,000 connections) do not fit
// next to 10,000 streams, so the default is 9 per organisation (9,000
// devices, 0.22 state changes/s each at 2,000/s, far under the broker's
// 20/s per device).
//
//	go run ./bench/streams [-source mqtt|kafka] [-clients 10000] [-orgs 1000] [-devices 9] [-rate 2000] [-duration 20s]
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/bench/internal/benchapp"
	"github.com/flock-io/flock-api/bench/internal/benchdb"
	"github.com/flock-io/flock-api/gen/client"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/simulate"
	"github.com/flock-io/flock-api/internal/testutil/launch"
)

const publicURL = "http://flock.bench"

func main() {
	admin := flag.String("database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the benchmark database on")
	clients := flag.Int("clients", 10000, "concurrent SSE clients")
	orgs := flag.Int("orgs", 1000, "organisations the clients and devices are spread over")
	source := flag.String("source", "mqtt", "where state changes enter: mqtt (devices publish to the embedded broker; api and ingester targets) or kafka (records put on flock.device.state.v1; api target)")
	devices := flag.Int("devices", 0, "devices per organisation (default 9 with -source mqtt, 10 with -source kafka)")
	rate := flag.Int("rate", 2000, "device state changes per second")
	duration := flag.Duration("duration", 20*time.Second, "how long to publish, per side")
	child := flag.String("child", "", "internal: run as the client process on this plan file")
	devicesChild := flag.String("devices-child", "", "internal: run as the MQTT devices' process on this plan file")
	flag.Parse()
	raiseFileLimit()
	if *devicesChild != "" {
		if err := runDevices(*devicesChild); err != nil {
			fmt.Fprintln(os.Stderr, "devices:", err)
			os.Exit(1)
		}
		return
	}
	if *child != "" {
		if err := runClients(*child); err != nil {
			fmt.Fprintln(os.Stderr, "clients:", err)
			os.Exit(1)
		}
		return
	}
	if *clients%*orgs != 0 {
		fail("-clients must be a multiple of -orgs, so every organisation has as many clients")
	}
	if *source != "mqtt" && *source != "kafka" {
		fail("-source must be mqtt or kafka, not %q", *source)
	}
	if *devices == 0 {
		*devices = 10
		if *source == "mqtt" {
			*devices = 9
		}
	}
	if *source == "mqtt" {
		// The server's side of every MQTT connection and of every stream,
		// and some room for the rest.
		var l syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err == nil {
			if need := uint64(*clients + *orgs**devices + 500); need > l.Cur {
				fail("-source mqtt with %d clients and %d devices needs about %d files open, and the limit is %d: use fewer -devices",
					*clients, *orgs**devices, need, l.Cur)
			}
		}
	}
	if err := run(*source, *admin, *clients, *orgs, *devices, *rate, *duration); err != nil {
		fail("%v", err)
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench/streams: "+format+"\n", args...)
	os.Exit(1)
}

func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

func run(source, adminURL string, clients, orgs, devicesPerOrg, rate int, duration time.Duration) error {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	viaMQTT := source == "mqtt"
	dbURL, pool, done, err := benchdb.Migrated(ctx, adminURL)
	if err != nil {
		return err
	}
	defer done()

	kctx, kcancel := context.WithCancel(ctx)
	addrc := make(chan string, 1)
	served := make(chan error, 1)
	go func() { served <- bus.ServeEmbedded(kctx, "127.0.0.1:0", log, func(a string) { addrc <- a }) }()
	var kafka string
	select {
	case kafka = <-addrc:
	case err := <-served:
		kcancel()
		return err
	}
	defer func() { kcancel(); <-served }()
	b, err := bus.Open(ctx, bus.Config{Brokers: []string{kafka}, Log: log})
	if err != nil {
		return err
	}
	defer b.Close()

	// Info level, as in production (a stream's access line is written
	// when it ends, outside what is measured). The embedded broker's
	// address is read from its start-up line.
	target := "api"
	if viaMQTT {
		target = "api,ingester"
	}
	var brokerAddr atomic.Value
	// The embedded registry and blob store keep their files here.
	dataDir, err := os.MkdirTemp("", "flock-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)
	proc, err := launch.Start([]string{"--database-url=" + dbURL, "--data-dir=" + dataDir, "--dev", "--public-url=" + publicURL,
		"--target=" + target, "--kafka-brokers=" + kafka},
		func(line string) {
			// (not_ready: launch's polls of /readyz before it was ready)
			if strings.Contains(line, `"level":"ERROR"`) && !strings.Contains(line, `"code":"not_ready"`) {
				fmt.Fprintln(os.Stderr, line)
			}
			if strings.Contains(line, `"concern":"device mqtt"`) {
				var rec struct {
					Listen string `json:"listen"`
				}
				if json.Unmarshal([]byte(line), &rec) == nil && rec.Listen != "" {
					brokerAddr.Store(rec.Listen)
				}
			}
		})
	if err != nil {
		return err
	}
	var stopOnce sync.Once
	stopAPI := func() { stopOnce.Do(func() { _, _ = proc.Stop(60 * time.Second) }) }
	defer stopAPI()
	token, err := benchapp.Token(ctx, pool, publicURL)
	if err != nil {
		return err
	}

	fmt.Printf("seeding %d organisations with an API key each...\n", orgs)
	type orgInfo struct{ id, key, provKey string }
	infos := make([]orgInfo, orgs)
	err = parallel(orgs, func(i int) error {
		id, err := postJSON(proc.URL+"/v1/orgs", token, map[string]any{"name": fmt.Sprintf("org-%d", i)}, "id")
		if err != nil {
			return err
		}
		infos[i].id = id
		if infos[i].key, err = postJSON(proc.URL+"/v1/orgs/"+id+"/api-keys", token, map[string]any{"name": "dash", "role": "viewer"}, "secret"); err != nil {
			return err
		}
		if !viaMQTT {
			return nil
		}
		fleet, err := postJSON(proc.URL+"/v1/orgs/"+id+"/fleets", token, map[string]any{"name": "fleet", "architecture": "amd64"}, "id")
		if err != nil {
			return err
		}
		infos[i].provKey, err = postJSON(proc.URL+"/v1/fleets/"+fleet+"/provisioning-keys", token, map[string]any{"name": "devices"}, "secret")
		return err
	})
	if err != nil {
		return err
	}
	// Each organisation's devices: with -source kafka, ids (state records
	// need only those); with -source mqtt, registered and connected.
	devs := make([][]string, orgs)
	var dp *devicesProc
	var warm deviceCounts // the devices' counts after the warm-up
	if viaMQTT {
		addr, _ := brokerAddr.Load().(string)
		if addr == "" {
			return errors.New("the embedded MQTT broker's address is not in flock-api's log")
		}
		n := orgs * devicesPerOrg
		fmt.Printf("registering %d devices (%d per organisation)...\n", n, devicesPerOrg)
		began := time.Now()
		creds, err := registerDevices(ctx, proc.URL, orgs, devicesPerOrg, func(o int) string { return infos[o].provKey })
		if err != nil {
			return err
		}
		var dplan strings.Builder
		for o := range creds {
			for k, c := range creds[o] {
				devs[o] = append(devs[o], c.id.String())
				fmt.Fprintf(&dplan, "%d %d %s %s\n", o, k, c.id, c.token)
			}
		}
		fmt.Printf("%d devices registered with tokens in %s; connecting them to the embedded broker at %s from a child process...\n",
			n, time.Since(began).Round(time.Millisecond), addr)
		dplanFile, err := os.CreateTemp("", "bench-streams-devices-*")
		if err != nil {
			return err
		}
		defer os.Remove(dplanFile.Name())
		if _, err := dplanFile.WriteString(dplan.String()); err != nil {
			return err
		}
		dplanFile.Close()
		began = time.Now()
		if dp, err = startDevices(dplanFile.Name(), addr); err != nil {
			return err
		}
		defer dp.kill()
		if err := dp.waitReady(); err != nil {
			return err
		}
		fmt.Printf("%d devices connected in %s\n", n, time.Since(began).Round(time.Millisecond))
		// A device that changes state has reported one before: each
		// reports its first now, at the rate, before the streams open (a
		// first report also changes the device's row in PostgreSQL the
		// most: release, summary counters).
		all := make([]event, 0, n)
		for o := range orgs {
			for k := range devicesPerOrg {
				all = append(all, event{org: o, dev: k})
			}
		}
		for chunk := range slices.Chunk(all, max(1, rate/100)) {
			if err := dp.publish(chunk); err != nil {
				return err
			}
			time.Sleep(10 * time.Millisecond)
		}
		if warm, err = dp.counts(); err != nil {
			return err
		}
		time.Sleep(2 * time.Second) // the ingester's writes after the PUBACKs
		fmt.Printf("warm-up: every device reported its first state (%d acknowledged, %d refused, %d failed)\n", warm.Acked, warm.Refused, warm.Failed)
	} else {
		for i := range devs {
			for range devicesPerOrg {
				devs[i] = append(devs[i], uuid.NewString())
			}
		}
	}
	perOrg := clients / orgs

	var plan strings.Builder
	for c := range clients {
		o := infos[c%orgs]
		fmt.Fprintf(&plan, "%d /v1/orgs/%s/events %s\n", c%orgs, o.id, o.key)
	}
	planFile, err := os.CreateTemp("", "bench-streams-plan-*")
	if err != nil {
		return err
	}
	defer os.Remove(planFile.Name())
	if _, err := planFile.WriteString(plan.String()); err != nil {
		return err
	}
	planFile.Close()

	// The events, the same for both sides: org index and device index.
	mkEvent := func(r *rand.Rand) (int, int) {
		return r.IntN(orgs), r.IntN(devicesPerOrg)
	}

	via := "records put on Kafka (flock.device.state.v1)"
	if viaMQTT {
		via = fmt.Sprintf("published over MQTT by %d devices (%.2f/s each)", orgs*devicesPerOrg, float64(rate)/float64(orgs*devicesPerOrg))
	}
	fmt.Printf("\n== flock-api (--target=%s): %d SSE clients over %d organisations (%d each), %d state changes/s for %s, %s\n",
		target, clients, orgs, perOrg, rate, duration, via)
	before := serverMem()
	c, err := startClients(planFile.Name(), proc.URL)
	if err != nil {
		return err
	}
	opened := time.Now()
	if err := c.waitReady(); err != nil {
		return err
	}
	fmt.Printf("%d streams open in %s\n", clients, time.Since(opened).Round(time.Millisecond))
	after := serverMem()
	perStream := float64(after.total()-before.total()) / float64(clients)
	fmt.Printf("memory per idle stream (server heap+stack after GC): %.1f KB (heap %.1f KB, stack %.1f KB, %d goroutines per stream)\n",
		perStream/1024, float64(after.heap-before.heap)/float64(clients)/1024, float64(after.stack-before.stack)/float64(clients)/1024,
		(after.goroutines-before.goroutines+clients/2)/clients)

	var send func([]event) error
	drain := 2 * time.Second
	if viaMQTT {
		drain = 3 * time.Second
		send = dp.publish
	} else {
		send = func(evs []event) error {
			recs := make([]bus.Record, len(evs))
			for i, e := range evs {
				dev := devs[e.org][e.dev]
				recs[i] = bus.Record{Topic: bus.TopicDeviceState, Key: []byte(dev), Value: stateRecord(infos[e.org].id, dev, e.pub)}
			}
			return b.Publish(ctx, recs...)
		}
	}
	published, cpu, err := publish(rate, duration, drain, mkEvent, send, c)
	if err != nil {
		return err
	}
	api, err := c.stop()
	if err != nil {
		return err
	}
	from := "Kafka publish"
	if viaMQTT {
		from = "MQTT publish"
		st, err := dp.stop()
		if err != nil {
			return err
		}
		fmt.Printf("MQTT: %d states published at QoS 1: %d acknowledged, %d refused by the broker, %d failed; devices' process CPU %.1fs (not counted below)\n",
			published, st.Acked-warm.Acked, st.Refused-warm.Refused, st.Failed-warm.Failed, (st.CPU - warm.CPU).Seconds())
	}
	report("flock-api", from, api, published*int64(perOrg), duration, cpu)
	// The server's side of the streams is noticed gone only at its next
	// write; stopping it frees those sockets now (the file limit is 20,000
	// here, and the bare side needs 10,000 more).
	stopAPI()

	fmt.Printf("\n== bare loop: the same clients and events, raw sockets, no HTTP stack, no auth, no filter\n")
	bare, err := startBare(orgs)
	if err != nil {
		return err
	}
	defer bare.close()
	c, err = startClients(planFile.Name(), "bare://"+bare.addr())
	if err != nil {
		return err
	}
	if err := c.waitReady(); err != nil {
		return err
	}
	published, bcpu, err := publish(rate, duration, 2*time.Second, mkEvent, func(evs []event) error {
		for _, e := range evs {
			bare.send(e.org, sseFrame(infos[e.org].id, devs[e.org][e.dev], e.pub))
		}
		return nil
	}, c)
	if err != nil {
		return err
	}
	bareRes, err := c.stop()
	if err != nil {
		return err
	}
	report("bare loop", "write", bareRes, published*int64(perOrg), duration, bcpu)
	fmt.Printf("\nratio flock-api / bare loop: delivered %.2f, server CPU per delivered event %.2f\n",
		float64(api.Received)/math.Max(1, float64(bareRes.Received)),
		(cpu.Seconds()/math.Max(1, float64(api.Received)))/math.Max(1e-12, bcpu.Seconds()/math.Max(1, float64(bareRes.Received))))
	return nil
}

// parallel runs f for 0..n-1 on 8 goroutines and returns the first error.
func parallel(n int, f func(int) error) error { return parallelN(8, n, f) }

// parallelN runs f for 0..n-1 on workers goroutines and returns the first error.
func parallelN(workers, n int, f func(int) error) error {
	var firstErr atomic.Value
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range workers {
		wg.Go(func() {
			for firstErr.Load() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return err
	}
	return nil
}

// --- the MQTT devices ---

type deviceCred struct {
	id    uuid.UUID
	token string
}

// registerDevices registers devicesPerOrg devices in each organisation's
// fleet and gets each a device token.
func registerDevices(ctx context.Context, apiURL string, orgs, devicesPerOrg int, provKey func(int) string) ([][]deviceCred, error) {
	api, err := client.NewClientWithResponses(apiURL, client.WithHTTPClient(&http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: 16}, Timeout: 30 * time.Second}))
	if err != nil {
		return nil, err
	}
	out := make([][]deviceCred, orgs)
	for o := range out {
		out[o] = make([]deviceCred, devicesPerOrg)
	}
	err = parallel(orgs*devicesPerOrg, func(i int) error {
		o, k := i/devicesPerOrg, i%devicesPerOrg
		id := uuid.New()
		tok, err := registerDevice(ctx, api, provKey(o), id, fmt.Sprintf("dev-%d", k))
		if err != nil {
			return fmt.Errorf("device %d of organisation %d: %w", k, o, err)
		}
		out[o][k] = deviceCred{id: id, token: tok}
		return nil
	})
	return out, err
}

// registerDevice registers a device with its own Ed25519 key and trades a
// signed assertion for its token, the calls internal/simulate's devices
// make (POST /device/v1/register, POST /device/v1/token).
func registerDevice(ctx context.Context, api *client.ClientWithResponses, provKey string, id uuid.UUID, name string) (string, error) {
	pub, priv, err := ed25519.GenerateKey(crand.Reader)
	if err != nil {
		return "", err
	}
	resp, err := api.DeviceRegisterWithResponse(ctx, client.DeviceRegister{
		ProvisioningKey: provKey, Uuid: id, PublicKey: base64.RawURLEncoding.EncodeToString(pub),
		Name: name, DeviceType: "simulated",
	})
	if err != nil {
		return "", fmt.Errorf("POST /device/v1/register: %w", err)
	}
	if resp.JSON201 == nil {
		return "", fmt.Errorf("POST /device/v1/register: %d %s", resp.StatusCode(), resp.Body)
	}
	assertion, err := devicetoken.SignAssertion(priv, id, resp.JSON201.TokenEndpoint, time.Minute)
	if err != nil {
		return "", err
	}
	tr, err := api.DeviceTokenWithResponse(ctx, client.DeviceTokenRequest{Assertion: assertion})
	if err != nil {
		return "", fmt.Errorf("POST /device/v1/token: %w", err)
	}
	if tr.JSON200 == nil {
		return "", fmt.Errorf("POST /device/v1/token: %d %s", tr.StatusCode(), tr.Body)
	}
	return tr.JSON200.AccessToken, nil
}

// devicesProc is the child process holding the devices' MQTT connections:
// it connects them all and says READY, publishes a state for each "org
// device" line it reads, on COUNTS waits for the PUBACKs and prints its
// counts, and on STOP does the same and disconnects the devices.
type devicesProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
	buf []byte
}

type deviceCounts struct {
	Acked, Refused, Failed int64
	CPU                    time.Duration
}

func startDevices(plan, brokerAddr string) (*devicesProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-devices-child", plan)
	cmd.Env = append(os.Environ(), "BENCH_MQTT="+brokerAddr)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &devicesProc{cmd: cmd, in: in, out: bufio.NewReader(out)}, nil
}

func (p *devicesProc) waitReady() error {
	line, err := p.out.ReadString('\n')
	if err != nil {
		return fmt.Errorf("devices process: %w", err)
	}
	if !strings.HasPrefix(line, "READY") {
		return fmt.Errorf("devices process: %s", line)
	}
	return nil
}

// publish has the devices of evs publish their next state, in one write.
func (p *devicesProc) publish(evs []event) error {
	p.buf = p.buf[:0]
	for _, e := range evs {
		p.buf = strconv.AppendInt(p.buf, int64(e.org), 10)
		p.buf = append(p.buf, ' ')
		p.buf = strconv.AppendInt(p.buf, int64(e.dev), 10)
		p.buf = append(p.buf, '\n')
	}
	_, err := p.in.Write(p.buf)
	return err
}

// counts waits for the PUBACKs of what was published and returns the
// counts so far.
func (p *devicesProc) counts() (deviceCounts, error) { return p.ask("COUNTS") }

func (p *devicesProc) ask(cmd string) (deviceCounts, error) {
	var c deviceCounts
	if _, err := io.WriteString(p.in, cmd+"\n"); err != nil {
		return c, err
	}
	line, err := p.out.ReadString('\n')
	if err != nil {
		return c, fmt.Errorf("devices process: %w", err)
	}
	if err := json.Unmarshal([]byte(line), &c); err != nil {
		return c, fmt.Errorf("devices process: %q: %w", line, err)
	}
	return c, nil
}

func (p *devicesProc) stop() (deviceCounts, error) {
	c, err := p.ask("STOP")
	if err != nil {
		return c, err
	}
	p.in.Close()
	return c, p.cmd.Wait()
}

// kill ends the child if it is still there (a run that failed half way).
func (p *devicesProc) kill() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}

// mqttDevice is one device's connection in the devices' process: plain
// paho (no autopaho: nothing reconnects during a run, and thousands of
// them stay light), and the simulator's payloads.
type mqttDevice struct {
	id       uuid.UUID
	conn     *paho.Client
	mu       sync.Mutex // one publish at a time, so seq increases on the wire
	payloads *simulate.Payloads
	topic    string
}

// runDevices is the devices' process (see devicesProc).
func runDevices(planPath string) error {
	raw, err := os.ReadFile(planPath)
	if err != nil {
		return err
	}
	addr := os.Getenv("BENCH_MQTT")
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	var devs [][]*mqttDevice
	for _, l := range lines {
		f := strings.Fields(l)
		o, _ := strconv.Atoi(f[0])
		for len(devs) <= o {
			devs = append(devs, nil)
		}
		devs[o] = append(devs[o], nil)
	}
	// The release every state reports running, with one service.
	release := uuid.MustParse("8e9d3c1a-52b4-4c0e-9a51-0d1f3b1c2a77")
	ctx := context.Background()
	err = parallelN(32, len(lines), func(i int) error {
		f := strings.Fields(lines[i])
		o, _ := strconv.Atoi(f[0])
		k, _ := strconv.Atoi(f[1])
		id, err := uuid.Parse(f[2])
		if err != nil {
			return err
		}
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		rm := uint16(16)
		pc := paho.NewClient(paho.ClientConfig{Conn: conn, ClientID: id.String()})
		ca, err := pc.Connect(ctx, &paho.Connect{
			ClientID: id.String(), CleanStart: true, KeepAlive: 60,
			UsernameFlag: true, Username: id.String(), PasswordFlag: true, Password: []byte(f[3]),
			Properties: &paho.ConnectProperties{ReceiveMaximum: &rm},
		})
		if err != nil {
			conn.Close()
			return fmt.Errorf("MQTT connect of %s: %w", id, err)
		}
		if ca.ReasonCode != 0 {
			conn.Close()
			return fmt.Errorf("MQTT connect of %s refused: %#x", id, ca.ReasonCode)
		}
		p := simulate.NewPayloads(id, uint64(i+1))
		p.SetRunning(release, []string{"app"})
		devs[o][k] = &mqttDevice{id: id, conn: pc, payloads: p, topic: devicetopic.Topic(id, devicetopic.State)}
		return nil
	})
	if err != nil {
		fmt.Println("ERROR", err)
		return err
	}
	fmt.Println("READY")
	cpu0 := cpuTime()
	var c struct{ acked, refused, failed atomic.Int64 }
	var wg sync.WaitGroup
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		line := in.Text()
		if line == "STOP" || line == "COUNTS" {
			wg.Wait()
			out, _ := json.Marshal(deviceCounts{Acked: c.acked.Load(), Refused: c.refused.Load(), Failed: c.failed.Load(), CPU: cpuTime() - cpu0})
			fmt.Println(string(out))
			if line == "STOP" {
				break
			}
			continue
		}
		os_, ds, _ := strings.Cut(line, " ")
		o, _ := strconv.Atoi(os_)
		k, _ := strconv.Atoi(ds)
		d := devs[o][k]
		wg.Go(func() {
			switch err := d.publishState(ctx); {
			case errors.Is(err, errRefused):
				c.refused.Add(1)
			case err != nil:
				c.failed.Add(1)
			default:
				c.acked.Add(1)
			}
		})
	}
	for _, ds := range devs {
		for _, d := range ds {
			_ = d.conn.Disconnect(&paho.Disconnect{ReasonCode: 0})
		}
	}
	return nil
}

var errRefused = errors.New("refused by the broker")

// publishState publishes the device's next reported state at QoS 1 and
// waits for its PUBACK. The state is the simulator's, its os_version
// carrying the time just before the publish.
func (d *mqttDevice) publishState(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var s events.ReportedState
	if err := json.Unmarshal(d.payloads.State(), &s); err != nil {
		return err
	}
	s.OsVersion = osVersion(time.Now().UnixNano())
	payload, err := json.Marshal(s)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pr, err := d.conn.Publish(pctx, &paho.Publish{Topic: d.topic, QoS: 1, Payload: payload})
	switch {
	case err != nil:
		return err
	case pr != nil && pr.ReasonCode >= 0x80:
		return fmt.Errorf("%w: %#x", errRefused, pr.ReasonCode)
	}
	return nil
}

// pubMarker precedes the publish time (Unix nanoseconds) in a state's
// os_version, where the clients look for it.
const pubMarker = "bench-pub-"

func osVersion(pub int64) string { return "flockOS 1.4.2 " + pubMarker + strconv.FormatInt(pub, 10) }

type mem struct {
	heap, stack uint64
	goroutines  int
}

func (m mem) total() uint64 { return m.heap + m.stack }

// serverMem is this process's heap and stack in use after a full GC (the
// process holds the server, the publisher and nothing of the clients).
func serverMem() mem {
	var ms runtime.MemStats
	for range 2 {
		runtime.GC()
	}
	time.Sleep(200 * time.Millisecond)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return mem{heap: ms.HeapInuse, stack: ms.StackInuse, goroutines: runtime.NumGoroutine()}
}

type event struct {
	org, dev int   // indices
	pub      int64 // Unix nanoseconds (-source mqtt: the device stamps its own)
}

// publish sends rate events/s for d in 10ms ticks, the clients counting
// from the first, then waits drain for the last events to arrive. It
// returns how many it sent and this process's CPU time meanwhile (the
// server's work, and with -source kafka the publishing).
func publish(rate int, d, drain time.Duration, mk func(*rand.Rand) (int, int), send func([]event) error, c *clientProc) (int64, time.Duration, error) {
	if err := c.command("GO"); err != nil {
		return 0, 0, err
	}
	r := rand.New(rand.NewPCG(1, 2))
	const tick = 10 * time.Millisecond
	start := time.Now()
	cpu0 := cpuTime()
	var sent int64
	for now := start; now.Sub(start) < d; now = time.Now() {
		want := int64(float64(rate) * now.Sub(start).Seconds())
		if want > sent {
			evs := make([]event, want-sent)
			for i := range evs {
				o, dev := mk(r)
				evs[i] = event{org: o, dev: dev, pub: time.Now().UnixNano()}
			}
			if err := send(evs); err != nil {
				return 0, 0, err
			}
			sent = want
		}
		time.Sleep(tick - time.Since(now)%tick)
	}
	// Let the last events arrive.
	time.Sleep(drain)
	return sent, cpuTime() - cpu0, nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// stateRecord is a flock.device.state.v1 record as the ingester writes it,
// its state valid for the ReportedState schema, the publish time in its
// os_version.
func stateRecord(org, device string, pub int64) []byte {
	return fmt.Appendf(nil, `{"device_id":%q,"org_id":%q,"fleet_id":%q,"received_at":%q,"state":{"seq":%d,"services":[{"name":"app","status":"running"}],"os_version":%q,"agent_version":"flock-simulate 1.1.0","ip_addresses":["10.1.2.3"],"running_release_id":"8e9d3c1a-52b4-4c0e-9a51-0d1f3b1c2a77"}}`,
		device, org, org, time.Now().UTC().Format(time.RFC3339Nano), pub/1000, osVersion(pub))
}

// sseFrame is what the bare loop writes: a frame of the same shape and
// size as the server's for the same record.
func sseFrame(org, device string, pub int64) []byte {
	rec := stateRecord(org, device, pub)
	id := strings.Repeat("A", 60)
	doc := fmt.Sprintf(`{"id":%q,"type":"device.state","at":%q,"org_id":%q,"fleet_id":%q,"device_id":%q,"data":%s}`,
		id, time.Now().UTC().Format(time.RFC3339Nano), org, org, device, rec)
	return []byte("id: " + id + "\nevent: device.state\ndata: " + doc + "\n\n")
}

func report(name, from string, r result, expected int64, d time.Duration, cpu time.Duration) {
	fmt.Printf("%s: delivered %d of %d expected events (%.1f%%), %.0f/s of %.0f/s; errors %d\n",
		name, r.Received, expected, 100*float64(r.Received)/math.Max(1, float64(expected)),
		float64(r.Received)/d.Seconds(), float64(expected)/d.Seconds(), r.Errors)
	fmt.Printf("%s: latency %s -> client receipt p50 %s, p99 %s, max %s; server process CPU %.1fs (%.1f µs per delivered event)\n",
		name, from, r.P50, r.P99, r.Max, cpu.Seconds(), float64(cpu.Microseconds())/math.Max(1, float64(r.Received)))
}

func postJSON(url, token string, body any, field string) (string, error) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("POST %s: %d %s", url, resp.StatusCode, raw)
	}
	v, _ := out[field].(string)
	return v, nil
}

// --- the bare loop ---

type bareServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns [][]net.Conn
	wg    sync.WaitGroup
}

func startBare(orgs int) (*bareServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &bareServer{ln: ln, conns: make([][]net.Conn, orgs)}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				fmt.Fprintln(os.Stderr, "bare loop: accept:", err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			s.wg.Go(func() { s.accept(c) })
		}
	})
	return s, nil
}

func (s *bareServer) addr() string { return s.ln.Addr().String() }

// accept reads the request line ("GET /<org index> ...") and the headers,
// answers the stream's head and hands the socket to the loop.
func (s *bareServer) accept(c net.Conn) {
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		c.Close()
		return
	}
	for {
		h, err := br.ReadString('\n')
		if err != nil {
			c.Close()
			return
		}
		if h == "\r\n" {
			break
		}
	}
	f := strings.Fields(line)
	o, err := strconv.Atoi(strings.TrimPrefix(f[1], "/"))
	if err != nil || o < 0 || o >= len(s.conns) {
		c.Close()
		return
	}
	if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\r\n"); err != nil {
		c.Close()
		return
	}
	s.mu.Lock()
	s.conns[o] = append(s.conns[o], c)
	s.mu.Unlock()
}

// send is the bare loop's whole work for one event.
func (s *bareServer) send(org int, frame []byte) {
	s.mu.Lock()
	conns := s.conns[org]
	s.mu.Unlock()
	for _, c := range conns {
		_, _ = c.Write(frame)
	}
}

func (s *bareServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for _, cs := range s.conns {
		for _, c := range cs {
			c.Close()
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// --- the client process ---

type result struct {
	Received int64
	Errors   int64
	P50, P99 time.Duration
	Max      time.Duration
}

type clientProc struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startClients(plan, base string) (*clientProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-child", plan)
	cmd.Env = append(os.Environ(), "BENCH_BASE="+base)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return &clientProc{cmd: cmd, in: in, out: bufio.NewReader(out)}, nil
}

func (c *clientProc) waitReady() error {
	line, err := c.out.ReadString('\n')
	if err != nil {
		return fmt.Errorf("client process: %w", err)
	}
	if !strings.HasPrefix(line, "READY") {
		return fmt.Errorf("client process: %s", line)
	}
	return nil
}

func (c *clientProc) command(s string) error {
	_, err := io.WriteString(c.in, s+"\n")
	return err
}

func (c *clientProc) stop() (result, error) {
	var r result
	if err := c.command("STOP"); err != nil {
		return r, err
	}
	line, err := c.out.ReadString('\n')
	if err != nil {
		return r, fmt.Errorf("client process: %w", err)
	}
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return r, fmt.Errorf("client process: %q: %w", line, err)
	}
	c.in.Close()
	return r, c.cmd.Wait()
}

// runClients opens every stream of the plan, says READY, counts events and
// their latency from GO to STOP, and prints the result.
func runClients(planPath string) error {
	raw, err := os.ReadFile(planPath)
	if err != nil {
		return err
	}
	base := os.Getenv("BENCH_BASE")
	bare := strings.HasPrefix(base, "bare://")
	tr := &http.Transport{MaxIdleConnsPerHost: -1, DisableCompression: true, DisableKeepAlives: false}
	client := &http.Client{Transport: tr}
	lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
	var counting atomic.Bool
	var received, errs atomic.Int64
	hist := newHist()
	ready := make(chan error, len(lines))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64) // opening pace
	for _, l := range lines {
		f := strings.Fields(l)
		wg.Go(func() {
			sem <- struct{}{}
			body, err := openStream(ctx, client, bare, base, f)
			<-sem
			ready <- err
			if err != nil {
				return
			}
			defer body.Close()
			br := bufio.NewReaderSize(body, 16<<10)
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					if ctx.Err() == nil {
						errs.Add(1)
					}
					return
				}
				if !bytes.HasPrefix(line, []byte("data: ")) || !counting.Load() {
					continue
				}
				i := bytes.LastIndex(line, []byte(pubMarker))
				if i < 0 {
					continue
				}
				rest := line[i+len(pubMarker):]
				j := 0
				for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
					j++
				}
				pub, err := strconv.ParseInt(string(rest[:j]), 10, 64)
				if err != nil {
					continue
				}
				received.Add(1)
				hist.add(time.Duration(time.Now().UnixNano() - pub))
			}
		})
	}
	for range lines {
		if err := <-ready; err != nil {
			cancel()
			return err
		}
	}
	fmt.Println("READY")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "GO":
			counting.Store(true)
		case "STOP":
			counting.Store(false)
			p50, p99, max := hist.quantiles()
			out, _ := json.Marshal(result{Received: received.Load(), Errors: errs.Load(), P50: p50, P99: p99, Max: max})
			fmt.Println(string(out))
			cancel()
			tr.CloseIdleConnections()
			wg.Wait()
			return nil
		}
	}
	cancel()
	return nil
}

func openStream(ctx context.Context, client *http.Client, bare bool, base string, f []string) (io.ReadCloser, error) {
	if bare {
		c, err := net.Dial("tcp", strings.TrimPrefix(base, "bare://"))
		if err != nil {
			return nil, err
		}
		context.AfterFunc(ctx, func() { c.Close() })
		if _, err := fmt.Fprintf(c, "GET /%s HTTP/1.1\r\nHost: bare\r\nAccept: text/event-stream\r\n\r\n", f[0]); err != nil {
			return nil, err
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return nil, err
		}
		return resp.Body, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+f[1], nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+f[2])
	req.Header.Set("Accept", "text/event-stream")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %d %s", f[1], resp.StatusCode, b)
	}
	return resp.Body, nil
}

// hist is a latency histogram of 1% wide buckets from 1µs.
type hist struct {
	mu      sync.Mutex
	buckets []int64
	max     time.Duration
}

func newHist() *hist { return &hist{buckets: make([]int64, 2000)} }

func bucketOf(d time.Duration) int {
	us := float64(d) / float64(time.Microsecond)
	if us < 1 {
		return 0
	}
	return min(int(math.Log(us)/math.Log(1.01)), 1999)
}

func (h *hist) add(d time.Duration) {
	b := bucketOf(d)
	h.mu.Lock()
	h.buckets[b]++
	h.max = max(h.max, d)
	h.mu.Unlock()
}

func (h *hist) quantiles() (p50, p99, mx time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var n int64
	for _, c := range h.buckets {
		n += c
	}
	at := func(q float64) time.Duration {
		want := int64(math.Ceil(q * float64(n)))
		var seen int64
		for i, c := range h.buckets {
			seen += c
			if seen >= want && c > 0 {
				return time.Duration(math.Pow(1.01, float64(i+1)) * float64(time.Microsecond)).Round(time.Microsecond)
			}
		}
		return 0
	}
	return at(0.5), at(0.99), h.max.Round(time.Microsecond)
}
