package ingester_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/livestate"
	"github.com/flock-io/flock-api/internal/mqtt/broker"
	"github.com/flock-io/flock-api/internal/telemetry"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
	"github.com/flock-io/flock-api/internal/testutil/promtest"
	"github.com/flock-io/flock-api/workers/ingester"
)

const (
	serviceUser     = "flock-ingester"
	servicePassword = "test-service-password"
	wait            = 20 * time.Second
)

func quiet() *slog.Logger {
	if os.Getenv("FLOCK_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// env is everything an ingester writes to, plus a broker devices reach.
type env struct {
	t         *testing.T
	pool      *pgxpool.Pool
	kv        kv.Store
	telemetry telemetry.Store
	bus       *bus.Bus
	tokens    *devicetoken.Service
	brokerURL *url.URL
	org       uuid.UUID
	fleet     uuid.UUID
}

type envOptions struct {
	redis     bool
	mosquitto bool
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	pool := pgtest.Pool(t)
	e := &env{t: t, pool: pool, telemetry: telemetry.NewPostgres(pool)}
	if o.redis {
		r, err := kv.NewRedis(t.Context(), redisURL())
		if err != nil {
			t.Fatalf("redis (run scripts/services.sh): %v", err)
		}
		t.Cleanup(func() { _ = r.Close() })
		e.kv = r
	} else {
		e.kv = kv.NewMemory()
	}
	b, err := bus.Open(t.Context(), bus.Config{Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	e.bus = b
	e.tokens, err = devicetoken.New(t.Context(), pool, devicetoken.Config{Issuer: "http://flock.test", Log: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if o.mosquitto {
		e.brokerURL = &url.URL{Scheme: "mqtt", Host: mosquittoAddr()}
	} else {
		br, err := broker.New(broker.Config{
			Listen: "127.0.0.1:0", ServiceUsername: serviceUser, ServicePassword: servicePassword,
			MessagesPerSecond: 10000, Burst: 10000, Log: quiet(), Devices: pool,
		}, e.tokens)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- br.Run(ctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("broker: %v", err)
			}
		})
		e.brokerURL = &url.URL{Scheme: "mqtt", Host: br.Addr()}
	}
	e.org, e.fleet = uuid.New(), uuid.New()
	mustExec(t, pool, `INSERT INTO orgs (id, name) VALUES ($1, 'acme')`, e.org)
	mustExec(t, pool, `INSERT INTO fleets (id, org_id, name, architecture) VALUES ($1, $2, 'f', 'aarch64')`, e.fleet, e.org)
	return e
}

func redisURL() string {
	if u := os.Getenv("FLOCK_TEST_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

func mosquittoAddr() string {
	if a := os.Getenv("FLOCK_TEST_MOSQUITTO_ADDR"); a != "" {
		return a
	}
	return "127.0.0.1:1883"
}

func mustExec(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// addDevice registers a device in PostgreSQL and returns it.
func (e *env) addDevice() uuid.UUID {
	e.t.Helper()
	id := uuid.New()
	mustExec(e.t, e.pool, `INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key)
		VALUES ($1, $2, $3, $4, 'rpi4', 'aarch64', $5)`, id, e.org, e.fleet, "dev-"+id.String()[:8], make([]byte, 32))
	return id
}

// startIngester runs an ingester until stop or the end of the test.
func (e *env) startIngester(cfg ingester.Config) (*ingester.Ingester, *prometheus.Registry, func() error) {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	v, err := asyncapi.NewValidator()
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.Broker = e.brokerURL
	if cfg.Username == "" {
		cfg.Username, cfg.Password = serviceUser, servicePassword
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "test-ingester-" + uuid.NewString()[:8]
	}
	if cfg.ShareGroup == "" {
		// Tests share Mosquitto: a group of their own keeps another test's
		// ingester from taking their messages.
		cfg.ShareGroup = "g" + uuid.NewString()[:8]
	}
	cfg.Log = quiet()
	cfg.Metrics = reg
	in, err := ingester.New(cfg, ingester.Deps{KV: e.kv, Telemetry: e.telemetry, Bus: e.bus, Pool: e.pool, Validator: v})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	var once sync.Once
	var runErr error
	var stoppedByTest atomic.Bool
	stopOnce := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(wait):
				runErr = fmt.Errorf("ingester did not stop")
			}
		})
		return runErr
	}
	stop := func() error {
		stoppedByTest.Store(true)
		return stopOnce()
	}
	e.t.Cleanup(func() {
		// A test that stopped the ingester has judged its error itself.
		if err := stopOnce(); err != nil && !stoppedByTest.Load() {
			e.t.Errorf("ingester: %v", err)
		}
	})
	testutil.Eventually(e.t, "ingester subscribed", func() error { return in.Ready(e.t.Context()) })
	return in, reg, stop
}

// device is an MQTT client of one device.
type device struct {
	id     uuid.UUID
	client *paho.Client
	inbox  chan *paho.Publish
}

// connect opens a device's MQTT v5 session: with a device token on the
// embedded broker, anonymously on Mosquitto.
func (e *env) connect(id uuid.UUID) *device {
	e.t.Helper()
	conn, err := net.Dial("tcp", e.brokerURL.Host)
	if err != nil {
		e.t.Fatal(err)
	}
	d := &device{id: id, inbox: make(chan *paho.Publish, 64)}
	d.client = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			d.inbox <- pr.Packet
			return true, nil
		}},
	})
	cp := &paho.Connect{ClientID: id.String(), CleanStart: true, KeepAlive: 30}
	if e.brokerURL.Host != mosquittoAddr() {
		tok, _, err := e.tokens.Issue(e.t.Context(), id, e.org, e.fleet)
		if err != nil {
			e.t.Fatal(err)
		}
		cp.Username, cp.UsernameFlag = id.String(), true
		cp.Password, cp.PasswordFlag = []byte(tok), true
	}
	ca, err := d.client.Connect(e.t.Context(), cp)
	if err != nil {
		e.t.Fatalf("device connect: %v", err)
	}
	if ca.ReasonCode != 0 {
		e.t.Fatalf("device connect refused: %d", ca.ReasonCode)
	}
	e.t.Cleanup(func() { _ = d.client.Disconnect(&paho.Disconnect{}) })
	return d
}

func (d *device) publish(t *testing.T, kind, payload string) {
	t.Helper()
	if err := d.send(t.Context(), kind, payload); err != nil {
		t.Fatal(err)
	}
}

// send publishes at QoS 1 and says what went wrong; any goroutine may call
// it.
func (d *device) send(ctx context.Context, kind, payload string) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	res, err := d.client.Publish(ctx, &paho.Publish{Topic: "flock/v1/devices/" + d.id.String() + "/" + kind, QoS: 1, Payload: []byte(payload)})
	if err != nil {
		return fmt.Errorf("publish %s: %w", kind, err)
	}
	if res != nil && res.ReasonCode >= 0x80 {
		return fmt.Errorf("publish %s refused: %#x", kind, res.ReasonCode)
	}
	return nil
}

// kafka collects every record of topics from the start.
type kafka struct {
	mu   sync.Mutex
	recs []bus.Record
}

// Every record must match its topic's schema in asyncapi/flock.yaml: the
// ingester splices records from the devices' bytes rather than encoding
// them, so nothing else checks their shape.
func (e *env) consume(topics ...string) *kafka {
	e.t.Helper()
	v, err := asyncapi.NewValidator()
	if err != nil {
		e.t.Fatal(err)
	}
	k := &kafka{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.bus.Consume(ctx, "test-"+uuid.NewString(), topics, func(_ context.Context, recs []bus.Record) error {
			for _, r := range recs {
				if err := v.ValidateRecord(r.Topic, r.Value); err != nil {
					e.t.Errorf("record on %s does not match its schema: %v\n%s", r.Topic, err, r.Value)
				}
			}
			k.mu.Lock()
			k.recs = append(k.recs, recs...)
			k.mu.Unlock()
			return nil
		})
	}()
	e.t.Cleanup(func() { cancel(); <-done })
	return k
}

func (k *kafka) of(topic string, device uuid.UUID) []map[string]any {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []map[string]any
	for _, r := range k.recs {
		if r.Topic == topic && string(r.Key) == device.String() {
			var m map[string]any
			if err := json.Unmarshal(r.Value, &m); err == nil {
				out = append(out, m)
			}
		}
	}
	return out
}

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

func TestPipeline(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  envOptions
	}{
		{"embedded broker, in-process kv", envOptions{}},
		{"embedded broker, redis", envOptions{redis: true}},
		{"mosquitto, in-process kv", envOptions{mosquitto: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.opt)
			k := e.consume(bus.TopicDeviceState, bus.TopicDeviceTelemetry, bus.TopicDeviceLogs, bus.TopicDeviceEvents, bus.TopicDeviceConnectivity)
			_, reg, _ := e.startIngester(ingester.Config{})
			id := e.addDevice()
			d := e.connect(id)
			now := time.Now().UTC().Truncate(time.Millisecond)

			d.publish(t, "status", `{"state":"online","connection_seq":7}`)
			d.publish(t, "state", `{"seq":3,"os_version":"flockOS 1.2","services":[{"name":"api","status":"running"}]}`)
			d.publish(t, "state", `{"seq":2,"os_version":"older"}`) // late: must not win
			d.publish(t, "telemetry", fmt.Sprintf(`{"samples":[{"ts":%q,"name":"cpu.temperature","value":51.5,"unit":"C"},{"ts":%q,"name":"cpu.temperature","value":52}]}`, ts(now.Add(-time.Second)), ts(now)))
			d.publish(t, "logs", fmt.Sprintf(`{"entries":[{"service":"api","seq":1,"ts":%q,"stream":"stdout","line":"hello"},{"service":"api","seq":2,"ts":%q,"stream":"stderr","line":"oops"}]}`, ts(now), ts(now)))
			d.publish(t, "logs", fmt.Sprintf(`{"entries":[{"service":"api","seq":2,"ts":%q,"stream":"stderr","line":"oops"}]}`, ts(now))) // redelivery
			event := uuid.New()
			release := uuid.New()
			d.publish(t, "events", fmt.Sprintf(`{"id":%q,"ts":%q,"type":"download_progress","release_id":%q,"service":"api","progress":0}`,
				event, ts(now), release))
			d.publish(t, "events", fmt.Sprintf(`{"id":%q,"ts":%q,"type":"download_progress","release_id":%q,"service":"api","progress":0}`,
				event, ts(now), release)) // redelivery

			testutil.Eventually(t, "live state", func() error {
				s, err := livestate.ReadState(t.Context(), e.kv, id)
				if err != nil || s == nil {
					return fmt.Errorf("state %v, %v", s, err)
				}
				if !strings.Contains(string(s.State), "flockOS 1.2") {
					return fmt.Errorf("state %s", s.State)
				}
				return nil
			})
			testutil.Eventually(t, "telemetry", func() error {
				got, err := e.telemetry.Samples(t.Context(), id, "cpu.temperature", time.Time{}, time.Time{}, 10)
				if err != nil || len(got) != 2 || got[0].Value != 52 || got[0].OrgID != e.org {
					return fmt.Errorf("samples %+v, %v", got, err)
				}
				return nil
			})
			testutil.Eventually(t, "logs, once each", func() error {
				got, err := e.telemetry.Logs(t.Context(), id, telemetry.LogQuery{Limit: 10})
				if err != nil || len(got) != 2 {
					return fmt.Errorf("logs %+v, %v", got, err)
				}
				return nil
			})
			testutil.Eventually(t, "update event, once", func() error {
				got, err := e.telemetry.UpdateEvents(t.Context(), id, time.Time{}, time.Time{}, nil, 10)
				if err != nil || len(got) != 1 {
					return fmt.Errorf("update events %+v, %v", got, err)
				}
				g := got[0]
				if g.ID != event || !g.TS.Equal(now) || g.Type != telemetry.UpdateDownloadProgress || g.ReleaseID.UUID != release ||
					g.Service != "api" || g.Progress == nil || *g.Progress != 0 || g.OrgID != e.org || g.ReceivedAt.IsZero() {
					return fmt.Errorf("update event %+v", g)
				}
				return nil
			})
			testutil.Eventually(t, "connectivity", func() error {
				got, err := e.telemetry.Connectivity(t.Context(), id, nil, 10)
				if err != nil || len(got) != 1 || got[0].ConnectionSeq != 7 || got[0].Event != telemetry.EventConnected {
					return fmt.Errorf("connectivity %+v, %v", got, err)
				}
				var connected bool
				var seen *time.Time
				if err := e.pool.QueryRow(t.Context(), `SELECT connected, last_seen_at FROM devices WHERE id = $1`, id).Scan(&connected, &seen); err != nil {
					return err
				}
				if !connected || seen == nil {
					return fmt.Errorf("device row connected=%v last_seen_at=%v", connected, seen)
				}
				return nil
			})
			testutil.Eventually(t, "kafka records", func() error {
				for _, topic := range []string{bus.TopicDeviceState, bus.TopicDeviceTelemetry, bus.TopicDeviceLogs, bus.TopicDeviceEvents, bus.TopicDeviceConnectivity} {
					recs := k.of(topic, id)
					if len(recs) == 0 {
						return fmt.Errorf("no record on %s", topic)
					}
					if recs[0]["org_id"] != e.org.String() || recs[0]["fleet_id"] != e.fleet.String() {
						return fmt.Errorf("%s record %v", topic, recs[0])
					}
				}
				return nil
			})
			if got := promtest.Sum(t, reg, "flock_ingest_messages_total", "kind", "logs"); got != 2 {
				t.Errorf("logs messages counted %v, want 2", got)
			}
		})
	}
}

// Bad input is dropped and counted, and the pipeline goes on for the same
// and every other device. The embedded broker refuses such payloads itself
// (PUBACK 0x99, and a deleted device cannot connect), so this runs on
// Mosquitto, which passes anything on, as an external broker may.
func TestBadInput(t *testing.T) {
	e := newEnv(t, envOptions{mosquitto: true})
	_, reg, _ := e.startIngester(ingester.Config{MaxPayload: 4096})
	good := e.addDevice()
	other := e.addDevice()
	d := e.connect(good)
	o := e.connect(other)
	// A device the platform does not know (deleted, say).
	ghost := e.connect(uuid.New())

	cases := []struct {
		dev     *device
		kind    string
		payload string
		reason  string
	}{
		{d, "state", `{"seq":1,`, "malformed_json"},
		{d, "state", `{"seq":-1}`, "schema"},
		{d, "telemetry", `{"samples":[{"ts":"now","name":"Bad Name","value":"x"}]}`, "schema"},
		{d, "logs", `{"entries":[{"service":"api","seq":1,"ts":"2026-01-01T00:00:00Z","stream":"stdout","line":"` + strings.Repeat("x", 5000) + `"}]}`, "too_large"},
		{ghost, "state", `{"seq":1}`, "unknown_device"},
	}
	for _, c := range cases {
		c.dev.publish(t, c.kind, c.payload)
	}
	o.publish(t, "state", `{"seq":1,"os_version":"fine"}`)
	d.publish(t, "state", `{"seq":5,"os_version":"also fine"}`)
	testutil.Eventually(t, "valid messages after bad ones", func() error {
		for _, id := range []uuid.UUID{good, other} {
			s, err := livestate.ReadState(t.Context(), e.kv, id)
			if err != nil || s == nil {
				return fmt.Errorf("device %s: %v %v", id, s, err)
			}
		}
		return nil
	})
	want := map[string]float64{}
	for _, c := range cases {
		want[c.reason]++
	}
	testutil.Eventually(t, "drop counters", func() error {
		for reason, n := range want {
			if got := promtest.Sum(t, reg, "flock_ingest_dropped_total", "reason", reason); got != n {
				return fmt.Errorf("%s: %v, want %v", reason, got, n)
			}
		}
		return nil
	})
}

// A disconnect of an old connection that arrives after the device
// reconnected must not mark it offline; the history keeps every event.
func TestConnectivityOrdering(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.startIngester(ingester.Config{})
	id := e.addDevice()
	d := e.connect(id)

	steps := []struct {
		payload    string
		wantOnline bool
		wantSeq    int64
	}{
		{`{"state":"online","connection_seq":1}`, true, 1},
		{`{"state":"online","connection_seq":2}`, true, 2},
		{`{"state":"offline","connection_seq":1}`, true, 2}, // the will of connection 1, late
		{`{"state":"online","connection_seq":2}`, true, 2},  // duplicate
		{`{"state":"offline","connection_seq":2}`, false, 2},
		{`{"state":"online","connection_seq":2}`, false, 2}, // a redelivered online cannot revive it
	}
	for i, s := range steps {
		d.publish(t, "status", s.payload)
		testutil.Eventually(t, fmt.Sprintf("step %d", i), func() error {
			c, err := livestate.ReadConn(t.Context(), e.kv, id)
			if err != nil || c == nil {
				return fmt.Errorf("conn %v %v", c, err)
			}
			var connected bool
			if err := e.pool.QueryRow(t.Context(), `SELECT connected FROM devices WHERE id = $1`, id).Scan(&connected); err != nil {
				return err
			}
			if c.Online != s.wantOnline || c.ConnectionSeq != s.wantSeq || connected != s.wantOnline {
				return fmt.Errorf("kv %+v, row connected=%v; want online=%v seq=%d", c, connected, s.wantOnline, s.wantSeq)
			}
			return nil
		})
	}
	testutil.Eventually(t, "history", func() error {
		got, err := e.telemetry.Connectivity(t.Context(), id, nil, 10)
		if err != nil || len(got) != 4 { // (1,c) (2,c) (1,d) (2,d); duplicates stored once
			return fmt.Errorf("history %+v %v", got, err)
		}
		return nil
	})
}

// Stopping an ingester in the middle of a stream loses nothing: what it
// acknowledged is stored, and what it did not the broker gives to the
// ingester that resumes its session.
func TestShutdownLosesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  envOptions
	}{
		{"embedded broker", envOptions{}},
		{"mosquitto", envOptions{mosquitto: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.opt)
			cfg := ingester.Config{ClientID: "restart-" + uuid.NewString()[:8], ShareGroup: "g" + uuid.NewString()[:8], Connections: 1, FlushPeriod: 5 * time.Millisecond}
			_, _, stop := e.startIngester(cfg)
			id := e.addDevice()
			d := e.connect(id)
			const n = 400
			published := make(chan error, 1)
			go func() {
				for i := 1; i <= n; i++ {
					if err := d.send(t.Context(), "logs", fmt.Sprintf(`{"entries":[{"service":"api","seq":%d,"ts":%q,"stream":"stdout","line":"line %d"}]}`, i, ts(time.Now()), i)); err != nil {
						published <- err
						return
					}
				}
				published <- nil
			}()
			// Stop once some but not all are stored.
			testutil.Eventually(t, "some stored", func() error {
				got, err := e.telemetry.Logs(t.Context(), id, telemetry.LogQuery{Limit: n})
				if err != nil || len(got) < 20 {
					return fmt.Errorf("%d stored, %v", len(got), err)
				}
				return nil
			})
			if err := stop(); err != nil {
				t.Fatalf("stop: %v", err)
			}
			if err := <-published; err != nil {
				t.Fatal(err)
			}
			e.startIngester(cfg) // same client id: resumes the session
			testutil.Eventually(t, "all stored once", func() error {
				got, err := e.telemetry.Logs(t.Context(), id, telemetry.LogQuery{Limit: 2 * n})
				if err != nil {
					return err
				}
				if len(got) != n {
					return fmt.Errorf("%d of %d lines stored", len(got), n)
				}
				return nil
			})
		})
	}
}

// A batch the stores refuse is never acknowledged: a stopping ingester
// gives up after its DrainTimeout with an error (it does not hang), and the
// broker redelivers the message to the next ingester of the session.
func TestShutdownWithFailingStore(t *testing.T) {
	e := newEnv(t, envOptions{})
	working := e.kv
	broken := kv.NewMemory()
	if err := broken.Close(); err != nil {
		t.Fatal(err)
	}
	e.kv = broken // every KV write fails with kv.ErrClosed
	cfg := ingester.Config{ClientID: "failing-" + uuid.NewString()[:8], ShareGroup: "g" + uuid.NewString()[:8],
		Connections: 1, DrainTimeout: 300 * time.Millisecond}
	_, reg, stop := e.startIngester(cfg)
	e.kv = working

	id := e.addDevice()
	d := e.connect(id)
	d.publish(t, "state", `{"seq":7}`)
	testutil.Eventually(t, "a failed write", func() error {
		if n := promtest.Sum(t, reg, "flock_ingest_write_errors_total"); n < 1 {
			return fmt.Errorf("%v write errors", n)
		}
		return nil
	})
	if err := stop(); err == nil || !strings.Contains(err.Error(), "not written at shutdown") {
		t.Fatalf("stop = %v, want the messages it could not write", err)
	}
	if _, err := working.Get(t.Context(), livestate.StateKey(id)); !errors.Is(err, kv.ErrNotFound) {
		t.Fatalf("state stored by the failing ingester: %v", err)
	}

	// Same session, working store; the default drain: the 300 ms above is
	// for the failing ingester, and under load this one may still be
	// finishing the redelivered message's batch when the test ends.
	again := cfg
	again.DrainTimeout = 0
	e.startIngester(again)
	testutil.Eventually(t, "state stored after redelivery", func() error {
		_, err := working.Get(t.Context(), livestate.StateKey(id))
		return err
	})
}
