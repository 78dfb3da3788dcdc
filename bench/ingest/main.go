// Command ingest measures the device data path in one run:
//
//  1. (a) fan-in: simulated devices (the simulator's payload mix: telemetry,
//     logs and state) publish at QoS 1 as fast as PUBACKs come back to the
//     embedded broker, and one plain QoS 1 subscriber (with the ingester's
//     Receive Maximum) counts what it gets;
//
//  2. (b) end to end: the same publishers, with the ingester writing to the
//     KV store, the telemetry store (PostgreSQL) and Kafka (kfake). Arrivals
//     are counted from the Kafka topics' end offsets; latency, from the time
//     in a message (its samples' or lines' ts, set just before publishing)
//     to the record's arrival on Kafka, is sampled on partition 0 of each
//     topic, at saturation and again at half the saturated rate.
//
//     The runs alternate, a (b) between two (a)s, because this machine's
//     speed drifts; each round reports the CPU this process and PostgreSQL
//     used per message, and the median ratio b/a counts;
//
//  3. (c) connections: N devices connect at once (from a child process, so
//     their memory is not counted) and hold idle connections; it reports
//     the time until all are connected and the broker's heap and stack per
//     connection.
//
//     go run ./bench/ingest [-rounds 5] [-publishers 100] [-duration 10s] [-connections 10000] [-redis URL]
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
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

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/bench/internal/benchdb"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/mqtt/broker"
	"github.com/flock-io/flock-api/internal/simulate"
	"github.com/flock-io/flock-api/internal/telemetry"
	"github.com/flock-io/flock-api/workers/ingester"
)

const (
	serviceUser     = "flock-ingester"
	servicePassword = "bench-password"
	issuer          = "http://flock.bench"
	childEnv        = "FLOCK_BENCH_CLIENTS"
)

type options struct {
	admin       string
	publishers  int
	duration    time.Duration
	warmup      time.Duration
	connections int
	deviceRate  float64
	redis       string
	conns       int
	recvMax     int
	rounds      int
	flush       time.Duration
	cpuProfile  string
	memProfile  string
}

func main() {
	if file := os.Getenv(childEnv); file != "" {
		if err := holdClients(file); err != nil {
			fmt.Fprintln(os.Stderr, "clients:", err)
			os.Exit(1)
		}
		return
	}
	var o options
	flag.StringVar(&o.admin, "database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the benchmark database on")
	flag.IntVar(&o.publishers, "publishers", 100, "simulated devices publishing")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long each rate is measured")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "publishing before each measurement starts")
	flag.IntVar(&o.connections, "connections", 10000, "idle devices to connect at once (0 skips)")
	flag.Float64Var(&o.deviceRate, "device-rate", 1000, "the broker's per-device rate limit, messages/s (flock-api defaults to 20; raised so publishers are limited by PUBACKs, not refused)")
	flag.StringVar(&o.redis, "redis", "", "Redis URL for the KV store (default: in-process)")
	flag.IntVar(&o.conns, "ingester-connections", 0, "MQTT connections of the ingester (0: its default)")
	flag.IntVar(&o.rounds, "rounds", 5, "runs of (b), each between two runs of (a); the median ratio counts")
	flag.IntVar(&o.recvMax, "ingester-receive-maximum", 0, "the ingester's Receive Maximum per connection (0: its default)")
	flag.DurationVar(&o.flush, "ingester-flush-period", 0, "the ingester's FlushPeriod (0: its default)")
	memProfile := flag.String("memprofile", "", "write heap profiles at the start (FILE.base) and end (FILE) of the end-to-end measurement; compare with pprof -base")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the end-to-end phase here")
	flag.Parse()
	o.cpuProfile = *cpuProfile
	o.memProfile = *memProfile
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "bench/ingest:", err)
		os.Exit(1)
	}
}

func run(o options) error {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	_, pool, done, err := benchdb.Migrated(ctx, o.admin)
	if err != nil {
		return err
	}
	defer done()
	tokens, err := devicetoken.New(ctx, pool, devicetoken.Config{Issuer: issuer, Log: log})
	if err != nil {
		return err
	}
	org, fleet := uuid.New(), uuid.New()
	if _, err := pool.Exec(ctx, `INSERT INTO orgs (id, name) VALUES ($1, 'bench')`, org); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `INSERT INTO fleets (id, org_id, name, architecture) VALUES ($1, $2, 'bench', 'amd64')`, fleet, org); err != nil {
		return err
	}
	devs := make([]cred, o.publishers)
	for i := range devs {
		id := uuid.New()
		if _, err := pool.Exec(ctx, `INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key)
			VALUES ($1, $2, $3, $4, 'generic-amd64', 'amd64', $5)`, id, org, fleet, fmt.Sprintf("bench-%d", i), make([]byte, 32)); err != nil {
			return err
		}
		tok, _, err := tokens.Issue(ctx, id, org, fleet)
		if err != nil {
			return err
		}
		devs[i] = cred{id: id, token: tok}
	}
	fmt.Printf("machine: %d CPUs, %s; %d publishers at QoS 1, broker limit %.0f msg/s per device\n",
		runtime.NumCPU(), runtime.Version(), o.publishers, o.deviceRate)

	// The machine's speed drifts (its cores are shared: the same fan-in
	// took 80 to 125 µs of CPU per message minutes apart), so (a) and (b)
	// alternate, each on a fresh broker, starting and ending with (a); each
	// (b) is compared with the mean of the (a) before and after it, and
	// the median round counts.
	var fanIns, e2es, ratios []float64
	var lat []time.Duration
	prev, err := measureFanIn(ctx, o, pool, tokens, devs)
	if err != nil {
		return fmt.Errorf("fan-in: %w", err)
	}
	fanIns = append(fanIns, prev.rate)
	for r := range o.rounds {
		e2e, l, err := measureEndToEnd(ctx, o, pool, tokens, devs, 0)
		if err != nil {
			return fmt.Errorf("end to end: %w", err)
		}
		next, err := measureFanIn(ctx, o, pool, tokens, devs)
		if err != nil {
			return fmt.Errorf("fan-in: %w", err)
		}
		ratio := e2e.rate / ((prev.rate + next.rate) / 2)
		fmt.Printf("round %d: (a) fan-in %.0f then %.0f msg/s (this process: %.2f cores, %.0f µs CPU and %.1f KB allocated per message, %d GCs); (b) end to end %.0f msg/s (%.2f cores, %.0f µs, %.1f KB, %d GCs; PostgreSQL %.2f cores, %.0f µs/msg); b/a %.2f\n",
			r+1, prev.rate, next.rate, next.cores, next.cpuPerMessage(), next.allocBytes/1024, next.gcCycles,
			e2e.rate, e2e.cores, e2e.cpuPerMessage(), e2e.allocBytes/1024, e2e.gcCycles, e2e.pgCores, e2e.pgCores/e2e.rate*1e6, ratio)
		fanIns, e2es, ratios = append(fanIns, next.rate), append(e2es, e2e.rate), append(ratios, ratio)
		lat = append(lat, l...)
		prev = next
	}
	fmt.Printf("(a) broker fan-in, plain subscriber: %.0f messages/s (median of %d runs; mean payload %d bytes)\n", median(fanIns), len(fanIns), sentBytes.Load()/max(sentCount.Load(), 1))
	fmt.Printf("(b) end to end, publish to KV + telemetry store + Kafka: %.0f messages/s (median)\n", median(e2es))
	fmt.Printf("    ratio b/a: %.2f (median; rounds %s)\n", median(ratios), list(ratios))
	fmt.Printf("    publishes the broker refused over the per-device rate limit: %d\n", refused.Load())
	slices.Sort(lat)
	fmt.Printf("    publish to Kafka latency at saturation, over %d messages: p50 %s, p99 %s, max %s\n",
		len(lat), pct(lat, 0.50), pct(lat, 0.99), pct(lat, 1))
	offered := median(e2es) / 2
	at, lat, err := measureEndToEnd(ctx, o, pool, tokens, devs, offered)
	if err != nil {
		return fmt.Errorf("end to end at %.0f msg/s: %w", offered, err)
	}
	fmt.Printf("    publish to Kafka latency at %.0f messages/s offered (half of b; %.0f arrived/s), over %d messages: p50 %s, p99 %s, max %s\n",
		offered, at.rate, len(lat), pct(lat, 0.50), pct(lat, 0.99), pct(lat, 1))

	if o.connections > 0 {
		if err := measureConnections(ctx, o, pool, tokens, org, fleet); err != nil {
			return fmt.Errorf("connections: %w", err)
		}
	}
	return nil
}

type cred struct {
	id    uuid.UUID
	token string
}

// refused counts publishes the broker refused over the rate limit;
// sentCount and sentBytes count what the publishers sent.
var refused, sentCount, sentBytes atomic.Int64

func newBroker(o options, pool *pgxpool.Pool, tokens *devicetoken.Service) (*broker.Broker, func(), error) {
	br, err := broker.New(broker.Config{
		Listen: "127.0.0.1:0", ServiceUsername: serviceUser, ServicePassword: servicePassword,
		MessagesPerSecond: o.deviceRate, Burst: int(2 * o.deviceRate), Log: slog.New(slog.DiscardHandler),
		Devices: pool,
	}, tokens)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = br.Run(ctx) }()
	return br, func() { cancel(); <-done }, nil
}

// publishers run one QoS 1 publisher per device, each sending the
// simulator's mix until stop is closed: as fast as its PUBACKs return, or,
// when offered is not 0, at its share of offered messages/s.
func publishers(addr string, devs []cred, stop <-chan struct{}, offered float64) (func(), error) {
	var wg sync.WaitGroup
	clients := make([]*paho.Client, 0, len(devs))
	for i, d := range devs {
		c, err := dialDevice(addr, d)
		if err != nil {
			return nil, err
		}
		clients = append(clients, c)
		p := simulate.NewPayloads(d.id, uint64(i+1))
		wg.Add(1)
		go func() {
			defer wg.Done()
			var tick <-chan time.Time
			if offered > 0 {
				t := time.NewTicker(time.Duration(float64(len(devs)) / offered * float64(time.Second)))
				defer t.Stop()
				tick = t.C
			}
			for {
				if tick != nil {
					select {
					case <-stop:
						return
					case <-tick:
					}
				}
				select {
				case <-stop:
					return
				default:
				}
				kind, payload := p.Next()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				res, err := c.Publish(ctx, &paho.Publish{Topic: devicetopic.Topic(d.id, kind), QoS: 1, Payload: payload})
				cancel()
				if err == nil && res != nil && res.ReasonCode == 0x97 {
					// Over the device's rate limit: the broker refused it
					// and the device goes on, as a real one would.
					refused.Add(1)
					continue
				}
				if err == nil && res != nil && res.ReasonCode >= 0x80 {
					err = fmt.Errorf("PUBACK reason %#x", res.ReasonCode)
				}
				if err != nil {
					select {
					case <-stop:
					default:
						fmt.Fprintf(os.Stderr, "publisher %s: %v\n", d.id, err)
					}
					return
				}
				sentCount.Add(1)
				sentBytes.Add(int64(len(payload)))
			}
		}()
	}
	return func() {
		wg.Wait()
		for _, c := range clients {
			_ = c.Disconnect(&paho.Disconnect{})
		}
	}, nil
}

func dialDevice(addr string, d cred) (*paho.Client, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := paho.NewClient(paho.ClientConfig{Conn: conn})
	ca, err := c.Connect(context.Background(), &paho.Connect{
		ClientID: d.id.String(), CleanStart: true, KeepAlive: 60,
		UsernameFlag: true, Username: d.id.String(), PasswordFlag: true, Password: []byte(d.token),
	})
	if err != nil {
		return nil, err
	}
	if ca.ReasonCode != 0 {
		return nil, fmt.Errorf("device %s refused: %#x", d.id, ca.ReasonCode)
	}
	return c, nil
}

// window counts how much counter grows over duration after warmup.
// It also reports the CPU this process used meanwhile, in cores (every
// part but PostgreSQL runs in it).
func window(o options, counter func() int64) measurement {
	time.Sleep(o.warmup)
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	start, t0, c0, p0 := counter(), time.Now(), cpuTime(), postgresCPU()
	time.Sleep(o.duration)
	elapsed := time.Since(t0).Seconds()
	n := counter() - start
	runtime.ReadMemStats(&m1)
	m := measurement{rate: float64(n) / elapsed, cores: (cpuTime() - c0).Seconds() / elapsed,
		pgCores: (postgresCPU() - p0).Seconds() / elapsed}
	if n > 0 {
		m.allocBytes = float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n)
		m.gcCycles = m1.NumGC - m0.NumGC
	}
	return m
}

// measurement is a rate and the CPU this process spent on it.
type measurement struct {
	rate       float64 // messages/s
	cores      float64 // CPU seconds per second
	pgCores    float64 // CPU seconds per second of the PostgreSQL server's processes
	allocBytes float64 // heap allocated per message
	gcCycles   uint32
}

func (m measurement) cpuPerMessage() float64 {
	if m.rate == 0 {
		return 0
	}
	return m.cores / m.rate * 1e6
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

func list(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(parts, ", ")
}

// profile writes a CPU profile to file, starting after delay, until the
// returned function is called.
func profile(file string, delay time.Duration) (func(), error) {
	f, err := os.Create(file)
	if err != nil {
		return nil, err
	}
	started := make(chan bool, 1)
	timer := time.AfterFunc(delay, func() { started <- pprof.StartCPUProfile(f) == nil })
	return func() {
		if !timer.Stop() && <-started {
			pprof.StopCPUProfile()
		}
		f.Close()
	}, nil
}

func writeHeapProfile(file string) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("allocs").WriteTo(f, 0)
}

// postgresCPU sums the CPU time of the processes named postgres on this
// machine (Linux /proc; 0 elsewhere). Backends that exit during a window
// are missed, which the benchmark's long-lived pool avoids.
func postgresCPU() time.Duration {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var ticks int64
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime stime: fields 14 and 15.
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || end < open || string(b[open+1:end]) != "postgres" {
			continue
		}
		fields := strings.Fields(string(b[end+1:]))
		if len(fields) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(fields[11], 10, 64)
		st, _ := strconv.ParseInt(fields[12], 10, 64)
		ticks += u + st
	}
	const clockTicks = 100 // USER_HZ on Linux
	return time.Duration(ticks) * time.Second / clockTicks
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func measureFanIn(ctx context.Context, o options, pool *pgxpool.Pool, tokens *devicetoken.Service, devs []cred) (measurement, error) {
	br, stopBroker, err := newBroker(o, pool, tokens)
	if err != nil {
		return measurement{}, err
	}
	defer stopBroker()
	var got atomic.Int64
	conn, err := net.Dial("tcp", br.Addr())
	if err != nil {
		return measurement{}, err
	}
	sub := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(paho.PublishReceived) (bool, error) { got.Add(1); return true, nil },
	}})
	// The same window the ingester announces.
	recvMax := uint16(o.recvMax)
	if recvMax == 0 {
		recvMax = ingester.DefaultReceiveMaximum
	}
	if _, err := sub.Connect(ctx, &paho.Connect{ClientID: "bench-subscriber", CleanStart: true, KeepAlive: 60,
		UsernameFlag: true, Username: serviceUser, PasswordFlag: true, Password: []byte(servicePassword),
		Properties: &paho.ConnectProperties{ReceiveMaximum: &recvMax}}); err != nil {
		return measurement{}, err
	}
	defer sub.Disconnect(&paho.Disconnect{})
	var subs []paho.SubscribeOptions
	for _, k := range []string{"state", "telemetry", "logs"} {
		subs = append(subs, paho.SubscribeOptions{Topic: devicetopic.Wildcard(k), QoS: 1})
	}
	if _, err := sub.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs}); err != nil {
		return measurement{}, err
	}
	stop := make(chan struct{})
	wait, err := publishers(br.Addr(), devs, stop, 0)
	if err != nil {
		return measurement{}, err
	}
	if o.cpuProfile != "" {
		stopProfile, err := profile(o.cpuProfile+".fanin", o.warmup)
		if err != nil {
			return measurement{}, err
		}
		defer stopProfile()
	}
	m := window(o, got.Load)
	close(stop)
	wait()
	return m, nil
}

// measureEndToEnd runs (b): publishers as fast as PUBACKs return, or at
// offered messages/s in all when that is not 0.
func measureEndToEnd(ctx context.Context, o options, pool *pgxpool.Pool, tokens *devicetoken.Service, devs []cred, offered float64) (measurement, []time.Duration, error) {
	br, stopBroker, err := newBroker(o, pool, tokens)
	if err != nil {
		return measurement{}, nil, err
	}
	defer stopBroker()
	var store kv.Store = kv.NewMemory()
	if o.redis != "" {
		r, err := kv.NewRedis(ctx, o.redis)
		if err != nil {
			return measurement{}, nil, err
		}
		store = r
	}
	defer store.Close()
	b, err := bus.Open(ctx, bus.Config{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return measurement{}, nil, err
	}
	defer b.Close()
	v, err := asyncapi.NewValidator()
	if err != nil {
		return measurement{}, nil, err
	}
	ing, err := ingester.New(ingester.Config{
		Broker: &url.URL{Scheme: "mqtt", Host: br.Addr()}, Username: serviceUser, Password: servicePassword,
		ClientID: "bench-ingester", Connections: o.conns, ReceiveMaximum: uint16(o.recvMax), FlushPeriod: o.flush, Log: slog.New(slog.DiscardHandler),
	}, ingester.Deps{KV: store, Telemetry: telemetry.NewPostgres(pool), Bus: b, Pool: pool, Validator: v})
	if err != nil {
		return measurement{}, nil, err
	}
	ictx, stopIngester := context.WithCancel(ctx)
	ingDone := make(chan error, 1)
	go func() { ingDone <- ing.Run(ictx) }()
	defer func() { stopIngester(); <-ingDone }()
	for ing.Ready(ctx) != nil {
		time.Sleep(10 * time.Millisecond)
	}

	// Arrivals are counted from the topics' end offsets, and latency is
	// sampled from partition 0 of each topic: a consumer of every record
	// would take CPU from the pipeline it measures.
	topics := []string{bus.TopicDeviceState, bus.TopicDeviceTelemetry, bus.TopicDeviceLogs}
	sample := map[string]map[int32]kgo.Offset{}
	for _, t := range topics {
		sample[t] = map[int32]kgo.Offset{0: kgo.NewOffset().AtEnd()}
	}
	kc, err := kgo.NewClient(kgo.SeedBrokers(b.Brokers()...), kgo.ConsumePartitions(sample))
	if err != nil {
		return measurement{}, nil, err
	}
	defer kc.Close()
	adm := kadm.NewClient(kc)
	arrived := func() int64 {
		offs, err := adm.ListEndOffsets(ctx, topics...)
		if err != nil {
			fmt.Fprintln(os.Stderr, "list end offsets:", err)
			return 0
		}
		var n int64
		offs.Each(func(o kadm.ListedOffset) { n += o.Offset })
		return n
	}
	var mu sync.Mutex
	var lat []time.Duration
	measuring := atomic.Bool{}
	cctx, stopConsumer := context.WithCancel(ctx)
	consDone := make(chan struct{})
	go func() {
		defer close(consDone)
		for cctx.Err() == nil {
			fetches := kc.PollFetches(cctx)
			now := time.Now()
			if !measuring.Load() {
				continue
			}
			mu.Lock()
			fetches.EachRecord(func(r *kgo.Record) {
				if t, ok := sentAt(r.Value); ok {
					lat = append(lat, now.Sub(t))
				}
			})
			mu.Unlock()
		}
	}()
	defer func() { stopConsumer(); <-consDone }()

	stop := make(chan struct{})
	wait, err := publishers(br.Addr(), devs, stop, offered)
	if err != nil {
		return measurement{}, nil, err
	}
	time.Sleep(o.warmup)
	if o.cpuProfile != "" {
		stopProfile, err := profile(o.cpuProfile, 0)
		if err != nil {
			return measurement{}, nil, err
		}
		defer stopProfile()
	}
	measuring.Store(true)
	if o.memProfile != "" {
		if err := writeHeapProfile(o.memProfile + ".base"); err != nil {
			return measurement{}, nil, err
		}
	}
	m := window(options{duration: o.duration}, arrived)
	if o.memProfile != "" {
		if err := writeHeapProfile(o.memProfile); err != nil {
			return measurement{}, nil, err
		}
	}
	measuring.Store(false)
	close(stop)
	wait()
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lat)
	return m, lat, nil
}

// sentAt reads the time a telemetry or log record's message was built: the
// last "ts" in the record, found without decoding the record, so that the
// measuring consumer takes as little as possible of the CPU the pipeline
// is measured on.
func sentAt(value []byte) (time.Time, bool) {
	const key = `"ts":"`
	i := bytes.LastIndex(value, []byte(key))
	if i < 0 {
		return time.Time{}, false
	}
	ts := value[i+len(key):]
	end := bytes.IndexByte(ts, '"')
	if end < 0 {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, string(ts[:end]))
	return t, err == nil
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(float64(len(d)-1) * p)
	return d[i].Round(10 * time.Microsecond)
}

func measureConnections(ctx context.Context, o options, pool *pgxpool.Pool, tokens *devicetoken.Service, org, fleet uuid.UUID) error {
	var list strings.Builder
	ids := make([]uuid.UUID, o.connections)
	for i := range ids {
		ids[i] = uuid.New()
		tok, _, err := tokens.Issue(ctx, ids[i], org, fleet)
		if err != nil {
			return err
		}
		fmt.Fprintf(&list, "%s %s\n", ids[i], tok)
	}
	// The broker admits only devices that exist.
	if _, err := pool.Exec(ctx, `INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key)
		SELECT id, $2, $3, 'idle-' || id, 'generic-amd64', 'amd64', '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
		FROM unnest($1::uuid[]) AS id`, ids, org, fleet); err != nil {
		return err
	}
	br, stopBroker, err := newBroker(o, pool, tokens)
	if err != nil {
		return err
	}
	defer stopBroker()
	file, err := os.CreateTemp("", "flock-bench-clients-*")
	if err != nil {
		return err
	}
	defer os.Remove(file.Name())
	if _, err := file.WriteString(br.Addr() + "\n" + list.String()); err != nil {
		return err
	}
	file.Close()
	before := settled()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), childEnv+"="+file.Name())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(stdout)
	var report string
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "ready ") {
			report = strings.TrimPrefix(sc.Text(), "ready ")
			break
		}
	}
	if report == "" {
		return fmt.Errorf("client process did not connect its devices")
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	after := settled()
	heap := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / float64(o.connections)
	stack := float64(int64(after.StackInuse)-int64(before.StackInuse)) / float64(o.connections)
	fmt.Printf("(c) %d devices connecting at once (token check included): all connected in %s\n", o.connections, report)
	fmt.Printf("    broker memory per idle connection: %.1f KB (heap %.1f KB + goroutine stacks %.1f KB)\n",
		(heap+stack)/1024, heap/1024, stack/1024)
	return nil
}

func settled() runtime.MemStats {
	var m runtime.MemStats
	for range 6 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m
}

// holdClients is the child process: it connects every listed device at
// once (bounded by the listen backlog), prints "ready <elapsed>" and holds
// the connections until stdin closes.
func holdClients(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	addr := lines[0]
	creds := lines[1:]
	clients := make([]*paho.Client, len(creds))
	errs := make(chan error, len(creds))
	start := time.Now()
	var wg sync.WaitGroup
	// Enough concurrent dialers to keep the broker's accept queue full
	// without running into the listen backlog.
	sem := make(chan struct{}, 256)
	for i, l := range creds {
		id, tok, _ := strings.Cut(l, " ")
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var c *paho.Client
			var err error
			for attempt := 0; attempt < 5; attempt++ {
				c, err = dialDevice(addr, cred{id: uuid.MustParse(id), token: tok})
				if err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				errs <- err
				return
			}
			clients[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	fmt.Printf("ready %s\n", time.Since(start).Round(time.Millisecond))
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}
