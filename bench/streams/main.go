// Command streams measures the live streams: -clients concurrent SSE
// clients (spread evenly over -orgs organisations, each with an API key)
// on flock-api's api target while devices change state at -rate events/s.
// It reports the events delivered per second against the number the
// clients should receive, the latency from the record's publication on
// flock.device.state.v1 (where the ingester puts a device's MQTT report)
// to the client reading it (p50/p99), and the memory per idle stream (the
// server's heap and stack after GC, before and after the streams open,
// divided by their number). Then the same clients connect to a bare loop
// in the same process (raw sockets, no HTTP stack, no auth, no filter: for
// each event, write the same bytes to the sockets of its organisation)
// fed the same events at the same rate: the physical limit of this machine.
//
// The clients run in a child process (this program, re-executed), so the
// server's memory is measured alone and the client's CPU is not counted as
// the server's.
//
//	go run ./bench/streams [-clients 10000] [-orgs 1000] [-rate 2000] [-duration 20s]
package main

import (
	"bufio"
	"bytes"
	"context"
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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/bench/internal/benchdb"
	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devoidc"
	"github.com/flock-io/flock-api/internal/testutil/launch"
)

const publicURL = "http://flock.bench"

func main() {
	admin := flag.String("database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the benchmark database on")
	clients := flag.Int("clients", 10000, "concurrent SSE clients")
	orgs := flag.Int("orgs", 1000, "organisations the clients and devices are spread over")
	devices := flag.Int("devices", 10, "devices per organisation")
	rate := flag.Int("rate", 2000, "device state changes per second")
	duration := flag.Duration("duration", 20*time.Second, "how long to publish, per side")
	child := flag.String("child", "", "internal: run as the client process on this plan file")
	flag.Parse()
	raiseFileLimit()
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
	if err := run(*admin, *clients, *orgs, *devices, *rate, *duration); err != nil {
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

func run(adminURL string, clients, orgs, devicesPerOrg, rate int, duration time.Duration) error {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
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
	// when it ends, outside what is measured).
	proc, err := launch.Start([]string{"--database-url=" + dbURL, "--dev", "--public-url=" + publicURL,
		"--target=api", "--kafka-brokers=" + kafka},
		func(line string) {
			if strings.Contains(line, `"level":"ERROR"`) {
				fmt.Fprintln(os.Stderr, line)
			}
		})
	if err != nil {
		return err
	}
	var stopOnce sync.Once
	stopAPI := func() { stopOnce.Do(func() { _, _ = proc.Stop(60 * time.Second) }) }
	defer stopAPI()
	prov, err := devoidc.New(ctx, pool, app.DevIssuer(publicURL), app.DevAudience)
	if err != nil {
		return err
	}
	token, err := prov.Mint(ctx, "bench@example.com", "", 2*time.Hour)
	if err != nil {
		return err
	}

	fmt.Printf("seeding %d organisations with an API key each...\n", orgs)
	type orgInfo struct{ id, key string }
	infos := make([]orgInfo, orgs)
	var seedErr atomic.Value
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range 8 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= orgs {
					return
				}
				id, err := postJSON(proc.URL+"/v1/orgs", token, map[string]any{"name": fmt.Sprintf("org-%d", i)}, "id")
				if err == nil {
					infos[i].id = id
					infos[i].key, err = postJSON(proc.URL+"/v1/orgs/"+id+"/api-keys", token, map[string]any{"name": "dash", "role": "viewer"}, "secret")
				}
				if err != nil {
					seedErr.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, ok := seedErr.Load().(error); ok {
		return err
	}
	// Each organisation's devices (state records need only their ids).
	devs := make([][]string, orgs)
	for i := range devs {
		for range devicesPerOrg {
			devs[i] = append(devs[i], uuid.NewString())
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

	// The events, the same for both sides: org index and device per event.
	mkEvent := func(r *rand.Rand) (int, string) {
		o := r.IntN(orgs)
		return o, devs[o][r.IntN(devicesPerOrg)]
	}

	fmt.Printf("\n== flock-api: %d SSE clients over %d organisations (%d each), %d state changes/s for %s\n",
		clients, orgs, perOrg, rate, duration)
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

	published, cpu, err := publish(rate, duration, mkEvent, func(evs []event) error {
		recs := make([]bus.Record, len(evs))
		for i, e := range evs {
			recs[i] = bus.Record{Topic: bus.TopicDeviceState, Key: []byte(e.device), Value: stateRecord(infos[e.org].id, e.device, e.pub)}
		}
		return b.Publish(ctx, recs...)
	}, c)
	if err != nil {
		return err
	}
	api, err := c.stop()
	if err != nil {
		return err
	}
	report("flock-api", api, published*int64(perOrg), duration, cpu)
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
	published, bcpu, err := publish(rate, duration, mkEvent, func(evs []event) error {
		for _, e := range evs {
			bare.send(e.org, sseFrame(infos[e.org].id, e.device, e.pub))
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
	report("bare loop", bareRes, published*int64(perOrg), duration, bcpu)
	fmt.Printf("\nratio flock-api / bare loop: delivered %.2f, server CPU per delivered event %.2f\n",
		float64(api.Received)/math.Max(1, float64(bareRes.Received)),
		(cpu.Seconds()/math.Max(1, float64(api.Received)))/math.Max(1e-12, bcpu.Seconds()/math.Max(1, float64(bareRes.Received))))
	return nil
}

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
	org    int
	device string
	pub    int64
}

// publish sends rate events/s for d in 10ms ticks, the clients counting
// from the first; it returns how many it sent and this process's CPU time
// meanwhile (the server's work, and the publishing).
func publish(rate int, d time.Duration, mk func(*rand.Rand) (int, string), send func([]event) error, c *clientProc) (int64, time.Duration, error) {
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
				evs[i] = event{org: o, device: dev, pub: time.Now().UnixNano()}
			}
			if err := send(evs); err != nil {
				return 0, 0, err
			}
			sent = want
		}
		time.Sleep(tick - time.Since(now)%tick)
	}
	// Let the last events arrive.
	time.Sleep(2 * time.Second)
	return sent, cpuTime() - cpu0, nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func stateRecord(org, device string, pub int64) []byte {
	return fmt.Appendf(nil, `{"device_id":%q,"org_id":%q,"fleet_id":%q,"received_at":%q,"state":{"seq":%d,"os_version":"flockOS 1.2","agent_version":"1.1.0","services":{"app":{"status":"running","release_id":"8e9d3c1a-52b4-4c0e-9a51-0d1f3b1c2a77"}},"pub":%d}}`,
		device, org, org, time.Now().UTC().Format(time.RFC3339Nano), pub%1000, pub)
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

func report(name string, r result, expected int64, d time.Duration, cpu time.Duration) {
	fmt.Printf("%s: delivered %d of %d expected events (%.1f%%), %.0f/s of %.0f/s; errors %d\n",
		name, r.Received, expected, 100*float64(r.Received)/math.Max(1, float64(expected)),
		float64(r.Received)/d.Seconds(), float64(expected)/d.Seconds(), r.Errors)
	fmt.Printf("%s: latency publish -> client p50 %s, p99 %s, max %s; server process CPU %.1fs (%.1f µs per delivered event)\n",
		name, r.P50, r.P99, r.Max, cpu.Seconds(), float64(cpu.Microseconds())/math.Max(1, float64(r.Received)))
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
				i := bytes.LastIndex(line, []byte(`"pub":`))
				if i < 0 {
					continue
				}
				rest := line[i+6:]
				j := bytes.IndexAny(rest, "},")
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
