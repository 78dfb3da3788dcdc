// Command events measures the events-gateway: flock-api runs with
// --target=all in this process (API, ingester, embedded broker and Kafka,
// the events-gateway), 100 webhook receivers listen on loopback, and the
// organisation has one endpoint per receiver, each taking device state
// events. It reports:
//
//   - deliveries per second from the one gateway replica to the 100
//     receivers for a burst of events (each fanned out to all 100), against
//     the same signed posts made by a bare loop with the same client and
//     as many goroutines as the gateway has workers (ratio);
//   - the same with 10% of the receivers timing out (they answer after the
//     delivery timeout), counting the healthy receivers' deliveries;
//   - the time from a device's MQTT state message (the ingester's receipt,
//     the event's received_at) to its webhook's arrival, p50 and p99, with
//     healthy receivers and again with 10% dead: how far dead endpoints
//     delay the others.
//
// go run ./bench/events [-events 200] [-devices 20]
package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/bench/internal/benchapp"
	"github.com/flock-io/flock-api/bench/internal/benchdb"
	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/simulate"
	"github.com/flock-io/flock-api/internal/testutil/launch"
	"github.com/flock-io/flock-api/internal/webhook"
)

const (
	publicURL = "http://127.0.0.1:9"
	receivers = 100
	workers   = 64
	timeout   = time.Second
)

func main() {
	admin := flag.String("database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the benchmark database on")
	events := flag.Int("events", 200, "events in each burst (each delivered to every receiver)")
	devices := flag.Int("devices", 20, "devices reporting the burst's states")
	flag.Parse()
	if err := run(*admin, *events, *devices); err != nil {
		fmt.Fprintln(os.Stderr, "bench/events:", err)
		os.Exit(1)
	}
}

// receiver is one customer's webhook.
type receiver struct {
	srv   *httptest.Server
	dead  atomic.Bool
	count atomic.Int64
	lat   *latencies
}

type latencies struct {
	mu sync.Mutex
	on bool
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	if l.on {
		l.d = append(l.d, d)
	}
	l.mu.Unlock()
}

func (l *latencies) start() {
	l.mu.Lock()
	l.on, l.d = true, nil
	l.mu.Unlock()
}

func (l *latencies) stop() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.on = false
	out := slices.Clone(l.d)
	slices.Sort(out)
	return out
}

func newReceiver(lat *latencies) *receiver {
	r := &receiver{lat: lat}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		if r.dead.Load() {
			// A receiver that hangs: answers after the sender gave up.
			select {
			case <-req.Context().Done():
			case <-time.After(2 * timeout):
			}
			return
		}
		var ev struct {
			Data struct {
				ReceivedAt time.Time `json:"received_at"`
			} `json:"data"`
		}
		if json.Unmarshal(body, &ev) == nil && !ev.Data.ReceivedAt.IsZero() {
			r.lat.add(time.Since(ev.Data.ReceivedAt))
		}
		r.count.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	return r
}

func run(adminURL string, nEvents, nDevices int) error {
	ctx := context.Background()
	dbURL, pool, done, err := benchdb.Migrated(ctx, adminURL)
	if err != nil {
		return err
	}
	defer done()
	dataDir, err := os.MkdirTemp("", "flock-bench-events-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)
	proc, err := launch.Start([]string{"--database-url=" + dbURL, "--dev", "--target=all", "--public-url=" + publicURL, "--data-dir=" + dataDir,
		"--events-allow-private", "--events-timeout=" + timeout.String(), fmt.Sprintf("--events-workers=%d", workers), "--events-per-endpoint=8",
		"--events-retry-schedule=1h"}, func(line string) {
		if strings.Contains(line, `"level":"ERROR"`) && !strings.Contains(line, "not_ready") {
			fmt.Fprintln(os.Stderr, line)
		}
	})
	if err != nil {
		return err
	}
	defer proc.Stop(30 * time.Second) //nolint:errcheck
	token, err := benchapp.Token(ctx, pool, publicURL)
	if err != nil {
		return err
	}
	api := &client{base: proc.URL, token: token}
	org := api.must("POST", "/v1/orgs", map[string]any{"name": "bench"})["id"].(string)
	fleet := api.must("POST", "/v1/orgs/"+org+"/fleets", map[string]any{"name": "f", "architecture": "amd64"})["id"].(string)
	key := api.must("POST", "/v1/fleets/"+fleet+"/provisioning-keys", map[string]any{"name": "k"})["secret"].(string)

	lat := &latencies{}
	var rcvs []*receiver
	var secrets []string
	for range receivers {
		r := newReceiver(lat)
		defer r.srv.Close()
		rcvs = append(rcvs, r)
		ep := api.must("POST", "/v1/orgs/"+org+"/event-endpoints", map[string]any{"name": "r", "kind": "webhook", "url": r.srv.URL,
			"types": []string{"io.flock.device.state.changed"}})
		secrets = append(secrets, ep["secret"].(string))
	}
	var tokens []string
	for range nDevices {
		t, err := registerDevice(api, key)
		if err != nil {
			return err
		}
		tokens = append(tokens, t)
	}
	total := func(healthyOnly bool) int64 {
		var n int64
		for _, r := range rcvs {
			if !healthyOnly || !r.dead.Load() {
				n += r.count.Load()
			}
		}
		return n
	}
	seq := 0
	burst := func() error {
		seq++
		perDevice := nEvents / nDevices
		var wg sync.WaitGroup
		errs := make(chan error, nDevices)
		for _, tok := range tokens {
			wg.Go(func() {
				for i := range perDevice {
					if _, err := api.do("PATCH", "/device/v1/state", tok, map[string]any{"seq": seq*100000 + i + 1}); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		return <-errs
	}
	waitFor := func(want int64, healthyOnly bool) (time.Duration, error) {
		start := time.Now()
		for total(healthyOnly) < want {
			if time.Since(start) > 5*time.Minute {
				return 0, fmt.Errorf("%d of %d deliveries after 5 min", total(healthyOnly), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
		return time.Since(start), nil
	}
	fmt.Printf("flock-api --target=all in one process, %d CPUs; %d receivers on loopback, one endpoint each; %d gateway workers, 8 per endpoint\n\n",
		runtime.NumCPU(), receivers, workers)

	// 1. Burst, healthy.
	n := int64(nEvents/nDevices*nDevices) * receivers
	before := total(false)
	start := time.Now()
	if err := burst(); err != nil {
		return err
	}
	if _, err := waitFor(before+n, false); err != nil {
		return err
	}
	gw := time.Since(start)
	bare := bareLoop(rcvs, secrets, int(n))
	fmt.Printf("burst of %d events x %d endpoints = %d deliveries, healthy receivers\n", nEvents, receivers, n)
	fmt.Printf("  events-gateway   %8.0f deliveries/s  (%s, from the first report)\n", float64(n)/gw.Seconds(), gw.Round(time.Millisecond))
	fmt.Printf("  bare loop        %8.0f posts/s       ratio %.2f\n", float64(n)/bare.Seconds(), bare.Seconds()/gw.Seconds())

	// 2. Burst, 10% dead.
	for i := range receivers / 10 {
		rcvs[i*10].dead.Store(true)
	}
	healthyN := n * 9 / 10
	before = total(true)
	start = time.Now()
	if err := burst(); err != nil {
		return err
	}
	if _, err := waitFor(before+healthyN, true); err != nil {
		return err
	}
	gw = time.Since(start)
	bareDead := bareLoop(rcvs, secrets, int(n))
	fmt.Printf("\nthe same with 10%% of receivers timing out (%s)\n", timeout)
	fmt.Printf("  events-gateway   %8.0f healthy deliveries/s  (%s)\n", float64(healthyN)/gw.Seconds(), gw.Round(time.Millisecond))
	fmt.Printf("  bare loop        %8.0f healthy posts/s       ratio %.2f\n", float64(healthyN)/bareDead.Seconds(), bareDead.Seconds()/gw.Seconds())

	// 3. Latency from MQTT: simulated devices publishing over MQTT.
	measure := func(dead bool) ([]time.Duration, error) {
		for i := range receivers / 10 {
			rcvs[i*10].dead.Store(dead)
		}
		lat.start()
		sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		_, err := simulate.Run(sctx, simulate.Config{API: proc.URL, ProvisioningKey: key, Devices: 10, Rate: 10, Name: fmt.Sprintf("lat%v", dead),
			SummaryEvery: time.Second, Out: io.Discard, Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			return nil, err
		}
		time.Sleep(2 * time.Second) // let the last events arrive; a figure, not a condition
		return lat.stop(), nil
	}
	healthy, err := measure(false)
	if err != nil {
		return err
	}
	withDead, err := measure(true)
	if err != nil {
		return err
	}
	q := func(d []time.Duration, p int) time.Duration {
		if len(d) == 0 {
			return 0
		}
		return d[min(len(d)-1, len(d)*p/100)].Round(100 * time.Microsecond)
	}
	fmt.Printf("\nMQTT state message (ingester receipt) to webhook arrival, 10 devices over MQTT for 20 s\n")
	fmt.Printf("  healthy receivers       %6d deliveries  p50 %s  p99 %s\n", len(healthy), q(healthy, 50), q(healthy, 99))
	fmt.Printf("  10%% dead (healthy ones) %6d deliveries  p50 %s  p99 %s\n", len(withDead), q(withDead, 50), q(withDead, 99))
	return nil
}

// bareLoop posts n signed messages round-robin to the receivers with the
// webhook package's sender (the gateway's client) from as many goroutines
// as the gateway has workers, and returns how long it took.
func bareLoop(rcvs []*receiver, secrets []string, n int) time.Duration {
	s := webhook.NewSender(webhook.Policy{AllowPrivate: true, Timeout: timeout})
	body := []byte(`{"specversion":"1.0","type":"io.flock.device.state.changed","data":{}}`)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				k := i % len(rcvs)
				s.Send(context.Background(), rcvs[k].srv.URL, webhook.Message{ID: uuid.NewString(), Time: time.Now(), Body: body,
					ContentType: "application/cloudevents+json", Secrets: secrets[k : k+1]})
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

func registerDevice(api *client, key string) (string, error) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	id := uuid.New()
	if _, err := api.do("POST", "/device/v1/register", "", map[string]any{"provisioning_key": key, "uuid": id.String(),
		"public_key": base64.RawURLEncoding.EncodeToString(pub), "name": "d-" + id.String()[:8], "device_type": "generic-amd64"}); err != nil {
		return "", err
	}
	a, err := devicetoken.SignAssertion(priv, id, app.TokenEndpoint(publicURL), time.Minute)
	if err != nil {
		return "", err
	}
	out, err := api.do("POST", "/device/v1/token", "", map[string]any{"assertion": a})
	if err != nil {
		return "", err
	}
	return out["access_token"].(string), nil
}

type client struct{ base, token string }

func (c *client) must(method, path string, body any) map[string]any {
	out, err := c.do(method, path, c.token, body)
	if err != nil {
		panic(err)
	}
	return out
}

func (c *client) do(method, path, token string, body any) (map[string]any, error) {
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, c.base+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s %s = %d: %v", method, path, resp.StatusCode, out)
	}
	return out, nil
}
