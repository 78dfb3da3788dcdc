package simulate_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/mqtt/broker"
	"github.com/flock-io/flock-api/internal/mqtt/mqttauth"
	"github.com/flock-io/flock-api/internal/simulate"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
	"github.com/flock-io/flock-api/internal/testutil/syncbuf"
	"github.com/jackc/pgx/v5/pgxpool"
)

const (
	serviceUser     = "ingester"
	servicePassword = "ingester-secret"
	// wait bounds every wait for something the simulator should do.
	wait = 20 * time.Second
)

// testLog logs to the test when it runs verbosely.
func testLog(t *testing.T) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// fleet is a running flock-api with an organisation, a fleet and a
// provisioning key made through the API as their owner would.
type fleet struct {
	srv                 *apptest.Server
	owner               string // token
	org, fleet, provKey string
	repos               string                   // <org slug>/<fleet slug>, where its images go
	images              map[string]apptest.Image // pushed, by service (image)
}

// newFleet serves the API and the registry-proxy its releases' images are
// pushed through.
func newFleet(t *testing.T) *fleet { t.Helper(); return newFleetOn(t, "--target=api,registry-proxy") }

// newFleetOn is newFleet on a server started with args.
func newFleetOn(t *testing.T, args ...string) *fleet {
	t.Helper()
	srv := apptest.Start(t, args...)
	f := &fleet{srv: srv, owner: srv.Token(t, "owner@example.com"), images: map[string]apptest.Image{}}
	org := f.must(t, 201, "POST", "/v1/orgs", map[string]any{"name": "Acme"})
	fl := f.must(t, 201, "POST", "/v1/orgs/"+org["id"].(string)+"/fleets", map[string]any{"name": "sensors", "architecture": "amd64"})
	f.org, f.fleet = org["id"].(string), fl["id"].(string)
	f.repos = org["slug"].(string) + "/" + fl["slug"].(string)
	f.provKey = f.must(t, 201, "POST", "/v1/fleets/"+f.fleet+"/provisioning-keys", map[string]any{"name": "simulator"})["secret"].(string)
	return f
}

// must sends a request as the owner and fails the test unless the status is want.
func (f *fleet) must(t *testing.T, want int, method, path string, body any) map[string]any {
	t.Helper()
	status, _, out := f.srv.Do(t, method, path, f.owner, body)
	if status != want {
		t.Fatalf("%s %s = %d, want %d: %v", method, path, status, want, out)
	}
	return out
}

// image is the amd64 image of service in the fleet's releases: a small
// random one, pushed by the owner through the registry-proxy the first
// time a release names the service.
func (f *fleet) image(t *testing.T, service string) apptest.Image {
	t.Helper()
	img, ok := f.images[service]
	if !ok {
		img = f.srv.PushImage(t, f.owner, f.repos+"/"+service, "amd64")
		f.images[service] = img
	}
	return img
}

// finalRelease creates a final release with one service and returns its id.
func (f *fleet) finalRelease(t *testing.T) string {
	t.Helper()
	img := f.image(t, "app")
	return f.must(t, 201, "POST", "/v1/fleets/"+f.fleet+"/releases", map[string]any{"version": "1.0", "status": "final",
		"services": []any{map[string]any{"name": "app", "images": map[string]any{"amd64": map[string]any{
			"image": img.Ref + ":1.0", "digest": img.Digest}}}}})["id"].(string)
}

// deviceTokens verifies the device tokens of f's server: the same signing
// keys, read from its database, under the issuer it uses.
func (f *fleet) deviceTokens(t *testing.T, issuer string) *devicetoken.Service {
	t.Helper()
	s, err := devicetoken.New(t.Context(), f.srv.Pool(t), devicetoken.Config{
		Issuer: issuer, TokenEndpoint: issuer + "/device/v1/token", Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startBroker runs the embedded broker on a free port until the test ends
// and returns its mqtt:// URL.
func startBroker(t *testing.T, devices *pgxpool.Pool, v mqttauth.Verifier) string {
	t.Helper()
	b, err := broker.New(broker.Config{Listen: "127.0.0.1:0", ServiceUsername: serviceUser, ServicePassword: servicePassword,
		Devices: devices, Log: testLog(t).With("component", "broker")}, v)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("broker: %v", err)
			}
		case <-time.After(wait):
			buf := make([]byte, 1<<22)
			t.Errorf("broker did not stop; goroutines:\n%s", buf[:runtime.Stack(buf, true)])
		}
	})
	return "mqtt://" + b.Addr()
}

// message is one message a device published.
type message struct {
	kind    string
	payload []byte
}

// subscriber is the service client, as the ingester would be: it receives
// everything devices publish and checks each payload against its schema.
type subscriber struct {
	*paho.Client
	validator *asyncapi.Validator

	mu       sync.Mutex
	byDevice map[string][]message
	invalid  []string
}

func subscribe(t *testing.T, brokerURL string) *subscriber {
	t.Helper()
	v, err := asyncapi.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	s := &subscriber{validator: v, byDevice: map[string][]message{}}
	conn, err := net.Dial("tcp", strings.TrimPrefix(brokerURL, "mqtt://"))
	if err != nil {
		t.Fatal(err)
	}
	s.Client = paho.NewClient(paho.ClientConfig{Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			s.add(pr.Packet.Topic, pr.Packet.Payload)
			return true, nil
		}}})
	rm := uint16(64) // the broker queues at most 64 per client
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	if _, err := s.Connect(ctx, &paho.Connect{ClientID: "test-ingester", KeepAlive: 30, CleanStart: true,
		Username: serviceUser, UsernameFlag: true, Password: []byte(servicePassword), PasswordFlag: true,
		Properties: &paho.ConnectProperties{ReceiveMaximum: &rm}}); err != nil {
		t.Fatalf("connect the service client: %v", err)
	}
	t.Cleanup(func() {
		_ = s.Disconnect(&paho.Disconnect{})
		<-s.Done()
	})
	// The broker grants the service flock/v1/devices/+/<kind> for each kind
	// devices publish; +/+ is not among its filters.
	var subs []paho.SubscribeOptions
	for _, kind := range devicetopic.FromDevice {
		subs = append(subs, paho.SubscribeOptions{Topic: "flock/v1/devices/+/" + kind, QoS: 1})
	}
	sa, err := s.Subscribe(ctx, &paho.Subscribe{Subscriptions: subs})
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	for i, code := range sa.Reasons {
		if code >= 0x80 {
			t.Fatalf("subscription %s refused: 0x%02x", subs[i].Topic, code)
		}
	}
	return s
}

func (s *subscriber) add(topic string, payload []byte) {
	rest := strings.TrimPrefix(topic, devicetopic.Prefix)
	device, kind, _ := strings.Cut(rest, "/")
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.validator.Validate(kind, payload); err != nil {
		s.invalid = append(s.invalid, topic+": "+err.Error())
	}
	s.byDevice[device] = append(s.byDevice[device], message{kind: kind, payload: bytes.Clone(payload)})
}

// messages returns what device published of kind, decoded into T.
func messages[T any](t *testing.T, s *subscriber, device, kind string) []T {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []T
	for _, m := range s.byDevice[device] {
		if m.kind != kind {
			continue
		}
		var v T
		if err := json.Unmarshal(m.payload, &v); err != nil {
			t.Fatalf("%s %s payload %s: %v", device, kind, m.payload, err)
		}
		out = append(out, v)
	}
	return out
}

func (s *subscriber) devices() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.byDevice))
	for d := range s.byDevice {
		out = append(out, d)
	}
	return out
}

func (s *subscriber) kinds(device string) map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for _, m := range s.byDevice[device] {
		out[m.kind]++
	}
	return out
}

// The payloads, as far as the assertions look into them.
type (
	status struct {
		State         string `json:"state"`
		ConnectionSeq int64  `json:"connection_seq"`
	}
	state struct {
		Seq              int    `json:"seq"`
		RunningReleaseID string `json:"running_release_id"`
		Services         []struct {
			Name   string `json:"name"`
			Status string `json:"status"`
		} `json:"services"`
	}
	updateEvent struct {
		ID        string `json:"id"`
		Type      string `json:"type"`
		ReleaseID string `json:"release_id"`
	}
)

// running is Run on a goroutine.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
	sum    simulate.Summary
	err    error
	last   atomic.Pointer[simulate.Summary] // the latest periodic summary
}

func start(cfg simulate.Config) *running {
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	cfg.OnSummary = func(s simulate.Summary) { r.last.Store(&s) }
	go func() {
		defer close(r.done)
		r.sum, r.err = simulate.Run(ctx, cfg)
	}()
	return r
}

func (r *running) stop(t *testing.T) (simulate.Summary, error) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(wait):
		t.Fatal("Run did not return after its context ended")
	}
	return r.sum, r.err
}

func (r *running) summary() simulate.Summary {
	if s := r.last.Load(); s != nil {
		return *s
	}
	return simulate.Summary{}
}

// noLeftovers fails the test if any goroutine of the simulator or autopaho
// outlives Run.
func noLeftovers(t *testing.T) {
	t.Helper()
	testutil.Eventually(t, "the simulator's goroutines to end", func() error {
		buf := make([]byte, 1<<22)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if strings.Contains(stacks, "flock-api/internal/simulate.") || strings.Contains(stacks, "paho.golang/autopaho.") {
			return fmt.Errorf("goroutines of the simulator outlived Run:\n%s", stacks)
		}
		return nil
	})
}

// TestSimulate runs five devices against the real API and the embedded
// broker and checks what arrives, as the ingester would see it.
func TestSimulate(t *testing.T) {
	const devices = 5
	f := newFleet(t)
	brokerURL := startBroker(t, f.srv.Pool(t), f.deviceTokens(t, app.DeviceIssuer(apptest.PublicURL)))
	sub := subscribe(t, brokerURL)
	out := &syncbuf.Buffer{}

	r := start(simulate.Config{
		API: f.srv.URL, ProvisioningKey: f.provKey, Devices: devices, Rate: 40, MQTTURL: brokerURL,
		SummaryEvery: 100 * time.Millisecond, Out: out, Log: testLog(t), Name: "sim",
	})
	t.Cleanup(func() { r.cancel(); <-r.done })

	// Every device connects, says it is online, fetches its target state
	// (no release yet) and publishes the whole mix.
	testutil.Eventually(t, "every device has published every periodic kind", testutil.Until(func() bool {
		ids := sub.devices()
		if len(ids) != devices {
			return false
		}
		for _, id := range ids {
			k := sub.kinds(id)
			if k[devicetopic.Status] < 1 || k[devicetopic.State] < 1 || k[devicetopic.Telemetry] < 1 || k[devicetopic.Logs] < 1 {
				return false
			}
		}
		return true
	}))
	testutil.Eventually(t, "every device has fetched its target state", testutil.Until(func() bool {
		return r.summary().TargetsFetched == devices
	}))
	page := f.must(t, 200, "GET", "/v1/orgs/"+f.org+"/devices?fleet_id="+f.fleet, nil)
	if items := page["items"].([]any); len(items) != devices {
		t.Fatalf("the fleet has %d devices, want %d", len(items), devices)
	}

	// A release, then a nudge to one device only.
	release := f.finalRelease(t)
	nudged := sub.devices()[0]
	nudge := []byte(`{"version":"after-release"}`)
	if err := sub.validator.Validate("target", nudge); err != nil {
		t.Fatalf("the test's nudge: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	if _, err := sub.Publish(ctx, &paho.Publish{Topic: devicetopic.Topic(uuid.MustParse(nudged), "target"), QoS: 1, Payload: nudge}); err != nil {
		t.Fatalf("publish the nudge: %v", err)
	}
	testutil.Eventually(t, "the nudged device reports the release running", testutil.Until(func() bool {
		for _, s := range messages[state](t, sub, nudged, devicetopic.State) {
			if s.RunningReleaseID == release && len(s.Services) == 1 && s.Services[0].Status == "running" {
				return true
			}
		}
		return false
	}))

	sum, err := r.stop(t)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	noLeftovers(t)

	t.Run("summary", func(t *testing.T) {
		for _, c := range []struct {
			name      string
			got, want int64
		}{
			{"registered", sum.Registered, devices},
			{"connected", sum.Connected, devices},
			{"online after the stop", sum.Online, 0},
			{"reconnects", sum.Reconnects, 0},
			{"connect refused", sum.ConnectRefused, 0},
			{"connect errors", sum.ConnectErrors, 0},
			{"publish refused", sum.PublishRefused, 0},
			{"publish errors", sum.PublishErrors, 0},
			// Online after connecting; offline is the will (DISCONNECT 0x04).
			{"status (online)", sum.Published.Status, devices},
			// Download started, half way, finished; install started; installed.
			{"update events", sum.Published.Events, 5},
			{"nudges", sum.NudgesReceived, 1},
			{"targets fetched (after connect, after the nudge)", sum.TargetsFetched, devices + 1},
			{"updates done", sum.UpdatesDone, 1},
			{"updates locked", sum.UpdatesLocked, 0},
			{"updates failed", sum.UpdatesFailed, 0},
			{"target errors", sum.TargetErrors, 0},
		} {
			if c.got != c.want {
				t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
			}
		}
		if sum.Published.Total() < 4*devices || sum.TokensIssued < devices {
			t.Errorf("summary %s: too little published or too few tokens", sum)
		}
	})

	t.Run("every payload matches its schema", func(t *testing.T) {
		testutil.Eventually(t, "every device's offline status arrived", testutil.Until(func() bool {
			for _, id := range sub.devices() {
				if sub.kinds(id)[devicetopic.Status] < 2 {
					return false
				}
			}
			return true
		}))
		sub.mu.Lock()
		defer sub.mu.Unlock()
		for _, p := range sub.invalid {
			t.Error(p)
		}
	})

	t.Run("status pairs online and offline by connection_seq", func(t *testing.T) {
		for _, id := range sub.devices() {
			st := messages[status](t, sub, id, devicetopic.Status)
			if len(st) != 2 || st[0].State != "online" || st[1].State != "offline" || st[0].ConnectionSeq != st[1].ConnectionSeq || st[0].ConnectionSeq == 0 {
				t.Errorf("device %s status messages %+v, want online then offline with one connection_seq", id, st)
			}
		}
	})

	t.Run("state seq increases", func(t *testing.T) {
		for _, id := range sub.devices() {
			last := 0
			for _, s := range messages[state](t, sub, id, devicetopic.State) {
				if s.Seq <= last {
					t.Errorf("device %s: state seq %d after %d", id, s.Seq, last)
				}
				last = s.Seq
			}
		}
	})

	t.Run("only the nudged device installed the release", func(t *testing.T) {
		for _, id := range sub.devices() {
			var running []string
			states := messages[state](t, sub, id, devicetopic.State)
			for _, s := range states {
				if s.RunningReleaseID != "" {
					running = append(running, s.RunningReleaseID)
					if len(s.Services) != 1 || s.Services[0].Name != "app" || (s.Services[0].Status != "installing" && s.Services[0].Status != "running") {
						t.Errorf("device %s reports the release with services %+v, want app installing or running", id, s.Services)
					}
				}
			}
			if len(running) > 0 {
				if last := states[len(states)-1]; last.RunningReleaseID != release || last.Services[0].Status != "running" {
					t.Errorf("device %s last reports %+v, want app running on the release", id, last)
				}
			}
			evs := messages[updateEvent](t, sub, id, devicetopic.Events)
			if id != nudged {
				if len(running) > 0 || len(evs) > 0 {
					t.Errorf("device %s was not nudged but reports %v and events %+v", id, running, evs)
				}
				continue
			}
			if len(evs) != 5 || evs[0].Type != "download_started" || evs[4].Type != "installed" {
				t.Fatalf("nudged device's update events %+v, want download_started ... installed", evs)
			}
			ids := map[string]bool{}
			for _, e := range evs {
				if e.ReleaseID != release {
					t.Errorf("update event %+v names another release than %s", e, release)
				}
				ids[e.ID] = true
			}
			if len(ids) != len(evs) {
				t.Errorf("update events share ids: %+v", evs)
			}
		}
	})

	t.Run("summary lines", func(t *testing.T) {
		text := out.String()
		if !strings.Contains(text, "\nfinal t=") || strings.Count(text, "registered=") < 2 {
			t.Errorf("output has no periodic and final summaries:\n%s", text)
		}
		if !strings.Contains(text, "updates_done=1 updates_locked=0 updates_failed=0") {
			t.Errorf("final summary does not count the update:\n%s", text)
		}
	})
}

// TestRunFails covers what ends a run with an error, and what a run
// survives and counts.
func TestRunFails(t *testing.T) {
	f := newFleet(t)
	good := startBroker(t, f.srv.Pool(t), f.deviceTokens(t, app.DeviceIssuer(apptest.PublicURL)))
	// A broker trusting another deployment refuses every device token.
	foreign := startBroker(t, f.srv.Pool(t), f.deviceTokens(t, "http://elsewhere.test"))

	for _, c := range []struct {
		name    string
		cfg     simulate.Config
		wantErr string
		check   func(t *testing.T, s simulate.Summary, logs string)
	}{
		{
			name:    "no broker named anywhere",
			cfg:     simulate.Config{ProvisioningKey: f.provKey, Devices: 2},
			wantErr: "no mqtt_url",
		},
		{
			name:    "unknown provisioning key",
			cfg:     simulate.Config{ProvisioningKey: "fpk_nope", Devices: 2, MQTTURL: good},
			wantErr: "401",
		},
		{
			name: "refused connections are counted and retried",
			cfg:  simulate.Config{ProvisioningKey: f.provKey, Devices: 2, Rate: 10, MQTTURL: foreign, Duration: 2 * time.Second},
			check: func(t *testing.T, s simulate.Summary, logs string) {
				if s.Registered != 2 || s.Connected != 0 || s.ConnectRefused < 2 || s.Published.Total() != 0 {
					t.Errorf("summary %s, want 2 registered, none connected, refusals counted", s)
				}
				// Logged once at Warn, with the CONNACK's reason string.
				if strings.Count(logs, "mqtt connection refused") != 1 || !strings.Contains(logs, `reason_code=0x86 reason="bad username or password"`) {
					t.Errorf("logs do not say once why the broker refused:\n%s", logs)
				}
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.cfg.API = f.srv.URL
			logs := &syncbuf.Buffer{}
			c.cfg.Log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
			ctx, cancel := context.WithTimeout(t.Context(), wait)
			defer cancel()
			sum, err := simulate.Run(ctx, c.cfg)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("Run: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("Run error %v, want one mentioning %q", err, c.wantErr)
			case c.wantErr != "" && strings.Contains(err.Error(), "\n"):
				t.Errorf("Run error spans lines: %q", err)
			}
			if ctx.Err() != nil {
				t.Fatal("Run returned only when the test's deadline passed")
			}
			if c.check != nil {
				c.check(t, sum, logs.String())
			}
			noLeftovers(t)
		})
	}
}

func TestConfigValidate(t *testing.T) {
	ok := simulate.Config{API: "http://localhost:8080", ProvisioningKey: "k", Devices: 1}
	for _, c := range []struct {
		name string
		edit func(*simulate.Config)
		want string // "" for valid
	}{
		{"valid", func(*simulate.Config) {}, ""},
		{"valid with broker", func(c *simulate.Config) { c.MQTTURL = "mqtts://broker.example.com:8883" }, ""},
		{"no API", func(c *simulate.Config) { c.API = "" }, "API URL is required"},
		{"API not http", func(c *simulate.Config) { c.API = "ftp://x" }, "want http(s)"},
		{"no key", func(c *simulate.Config) { c.ProvisioningKey = "" }, "provisioning key"},
		{"no devices", func(c *simulate.Config) { c.Devices = 0 }, "devices must be at least 1"},
		{"negative rate", func(c *simulate.Config) { c.Rate = -1 }, "rate"},
		{"broker not mqtt", func(c *simulate.Config) { c.MQTTURL = "http://broker:1883" }, "want mqtt://"},
		{"broker without host", func(c *simulate.Config) { c.MQTTURL = "mqtt://" }, "no host"},
		{"negative duration", func(c *simulate.Config) { c.Duration = -time.Second }, "duration"},
		{"long name", func(c *simulate.Config) { c.Name = strings.Repeat("n", 81) }, "name prefix"},
		{"valid update behaviour", func(c *simulate.Config) {
			c.StepTime, c.LockShare, c.LockFor, c.FailShare = time.Millisecond, 1, time.Minute, 0.5
		}, ""},
		{"negative step time", func(c *simulate.Config) { c.StepTime = -time.Second }, "step time"},
		{"negative lock time", func(c *simulate.Config) { c.LockFor = -time.Second }, "lock time"},
		{"lock share above 1", func(c *simulate.Config) { c.LockShare = 1.5 }, "lock share must be between 0 and 1"},
		{"lock share NaN", func(c *simulate.Config) { c.LockShare = math.NaN() }, "lock share must be between 0 and 1"},
		{"negative fail share", func(c *simulate.Config) { c.FailShare = -0.1 }, "fail share must be between 0 and 1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := ok
			c.edit(&cfg)
			err := cfg.Validate()
			if c.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate = %v, want an error mentioning %q", err, c.want)
			}
			if _, runErr := simulate.Run(t.Context(), cfg); runErr == nil || runErr.Error() != err.Error() {
				t.Fatalf("Run = %v, want the Validate error", runErr)
			}
		})
	}
}

// TestPayloadsMatchSchemas generates many messages of every kind a device
// publishes and checks each against asyncapi/flock.yaml, so a change of
// either side that breaks the other fails here.
func TestPayloadsMatchSchemas(t *testing.T) {
	v, err := asyncapi.NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	device, release := uuid.New(), uuid.New()
	for _, c := range []struct {
		kind string
		gen  func(p *simulate.Payloads, i int) []byte
	}{
		{devicetopic.State, func(p *simulate.Payloads, _ int) []byte { return p.State() }},
		{devicetopic.Telemetry, func(p *simulate.Payloads, _ int) []byte { return p.Telemetry() }},
		{devicetopic.Logs, func(p *simulate.Payloads, _ int) []byte { return p.Logs() }},
		{devicetopic.Events, func(p *simulate.Payloads, i int) []byte {
			step := simulate.UpdateStep{Release: release, Attempt: i / 7, Type: events.UpdateEventType(i % len(events.UpdateEventTypeValues))}
			if i%3 == 0 {
				step.Service, step.Progress = "app", i%101
			}
			if step.Type == events.UpdateEventTypeFailed {
				step.Error = "app exited"
			}
			return p.UpdateEvent(step)
		}},
		{devicetopic.Status, func(_ *simulate.Payloads, i int) []byte { return simulate.Status(i%2 == 0, time.Now().UnixMilli()) }},
		{devicetopic.CommandResults, func(p *simulate.Payloads, i int) []byte {
			reason := ""
			status := []string{"received", "succeeded", "failed"}[i%3]
			if status == "failed" {
				reason = "no such service"
			}
			return p.CommandResult(uuid.NewString(), status, reason)
		}},
	} {
		t.Run(c.kind, func(t *testing.T) {
			// No release; one running; one half way through an update,
			// its services in every state, one held by a lock.
			every := []events.ServiceStatus{{Name: "app", Status: ptr(events.ServiceStateRunning), DownloadProgress: 50, UpdateLocked: true}}
			for st := range events.ServiceStateValues {
				every = append(every, events.ServiceStatus{Name: fmt.Sprintf("svc-%d", st), Status: ptr(events.ServiceState(st)), DownloadProgress: st * 20})
			}
			for running := range 3 {
				p := simulate.NewPayloads(device, 7)
				switch running {
				case 1:
					p.SetRunning(release, []string{"app", "db"})
				case 2:
					p.SetServices(release, every)
				}
				for i := range 200 {
					if err := v.Validate(c.kind, c.gen(p, i)); err != nil {
						t.Fatalf("message %d (case %d): %v", i, running, err)
					}
				}
			}
		})
	}

	t.Run("mix", func(t *testing.T) {
		p := simulate.NewPayloads(device, 1)
		seen := map[string]int{}
		for range 10 {
			kind, payload := p.Next()
			seen[kind]++
			if err := v.Validate(kind, payload); err != nil {
				t.Fatal(err)
			}
		}
		for _, kind := range []string{devicetopic.State, devicetopic.Telemetry, devicetopic.Logs} {
			if seen[kind] == 0 {
				t.Errorf("ten messages of the mix hold no %s: %v", kind, seen)
			}
		}
	})

	t.Run("every device kind is a channel", func(t *testing.T) {
		channels := map[string]bool{}
		for _, k := range v.Kinds() {
			channels[k] = true
		}
		for _, k := range devicetopic.FromDevice {
			if !channels[k] {
				t.Errorf("the AsyncAPI document has no device channel %q", k)
			}
		}
	})
}

func TestCommandLine(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"--help"}, app.ExitOK, "Usage: flock-api simulate"},
		{"unknown flag", []string{"--bogus"}, app.ExitUsage, "flag provided but not defined: -bogus"},
		{"no key", []string{"--devices=1"}, app.ExitUsage, "--provisioning-key (or FLOCK_PROVISIONING_KEY) is required"},
		{"no devices", []string{"--provisioning-key=k", "--devices=0"}, app.ExitUsage, "devices must be at least 1"},
		{"bad broker", []string{"--provisioning-key=k", "--mqtt=http://x"}, app.ExitUsage, "want mqtt://"},
		{"extra argument", []string{"--provisioning-key=k", "now"}, app.ExitUsage, `unexpected argument "now"`},
		{"bad summary interval", []string{"--provisioning-key=k", "--summary-every=0s"}, app.ExitUsage, "--summary-every must be positive"},
		{"no lock time", []string{"--provisioning-key=k", "--lock-for=0s"}, app.ExitUsage, "--lock-for must be positive"},
		{"bad fail share", []string{"--provisioning-key=k", "--fail-share=2"}, app.ExitUsage, "fail share must be between 0 and 1"},
		{"bad lock share", []string{"--provisioning-key=k", "--lock-share=-1"}, app.ExitUsage, "lock share must be between 0 and 1"},
		{"negative step time", []string{"--provisioning-key=k", "--step-time=-1s"}, app.ExitUsage, "step time -1s is negative"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := app.Main(t.Context(), append([]string{"simulate"}, c.args...), &stdout, &stderr, func(string) string { return "" })
			if code != c.code {
				t.Errorf("exit %d, want %d; stderr:\n%s", code, c.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), c.want) {
				t.Errorf("stderr does not say %q:\n%s", c.want, stderr.String())
			}
			if c.code == app.ExitUsage && c.name != "unknown flag" && strings.Count(strings.TrimSpace(stderr.String()), "\n") != 0 {
				t.Errorf("the error is not one line:\n%s", stderr.String())
			}
		})
	}

	t.Run("unreachable API fails with one line", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // nothing listens there now
		code := app.Main(t.Context(), []string{"simulate", "--api=http://" + addr, "--provisioning-key=k", "--devices=1", "--duration=10s"},
			&stdout, &stderr, func(string) string { return "" })
		if code != app.ExitError || !strings.Contains(stderr.String(), "connection refused") || strings.Count(strings.TrimSpace(stderr.String()), "\n") != 0 {
			t.Errorf("exit %d, stderr %q; want 1 and one line saying the connection was refused", code, stderr.String())
		}
		if !strings.Contains(stdout.String(), "final t=") {
			t.Errorf("no final summary on stdout: %q", stdout.String())
		}
	})
}

// Devices renew their tokens on the open connection (MQTT v5
// re-authentication) and stay connected; against a broker that does not
// know the method they connect without it.
func TestTokensRenewedOnTheConnection(t *testing.T) {
	f := newFleet(t)
	brokerURL := startBroker(t, f.srv.Pool(t), f.deviceTokens(t, app.DeviceIssuer(apptest.PublicURL)))
	r := start(simulate.Config{
		API: f.srv.URL, ProvisioningKey: f.provKey, Devices: 2, Rate: 4, MQTTURL: brokerURL,
		SummaryEvery: 50 * time.Millisecond, Out: io.Discard, Log: testLog(t), TokenRefresh: 300 * time.Millisecond,
	})
	t.Cleanup(func() { r.cancel(); <-r.done })
	testutil.Eventually(t, "each device renewed its token on its connection twice", testutil.Until(func() bool {
		return r.summary().Reauths >= 4
	}))
	sum, err := r.stop(t)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Reconnects != 0 || sum.ConnectRefused != 0 || sum.Connected != 2 {
		t.Errorf("summary %s: devices reconnected or were refused while renewing", sum)
	}
}
