package handlers_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// commandEnv is the whole platform (--target=all) on a Kafka cluster the
// test also reads, so it sees the command events as the streams would, and
// on an MQTT port a device of the test connects to.
type commandEnv struct {
	srv    *apptest.Server
	broker string // host:port of the embedded MQTT broker
	events *eventLog
}

func startCommandEnv(t *testing.T) *commandEnv {
	t.Helper()
	b, err := bus.Open(context.Background(), bus.Config{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv := apptest.Start(t, "--mqtt-listen="+addr, "--mqtt-public-url=mqtt://"+addr, "--kafka-brokers="+strings.Join(b.Brokers(), ","))
	return &commandEnv{srv: srv, broker: addr, events: readCommandEvents(t, b)}
}

// eventLog holds the command events published so far.
type eventLog struct {
	mu  sync.Mutex
	evs []events.CommandEventRecord
	err error
}

func readCommandEvents(t *testing.T, b *bus.Bus) *eventLog {
	t.Helper()
	l := &eventLog{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := b.Consume(ctx, "test-command-events", []string{bus.TopicCommandEvents}, func(_ context.Context, recs []bus.Record) error {
			l.mu.Lock()
			defer l.mu.Unlock()
			for _, r := range recs {
				var ev events.CommandEventRecord
				if err := json.Unmarshal(r.Value, &ev); err != nil {
					l.err = fmt.Errorf("command event %s: %w", r.Value, err)
					continue
				}
				l.evs = append(l.evs, ev)
			}
			return nil
		})
		if err != nil {
			l.mu.Lock()
			l.err = err
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return l
}

// of is the statuses of command id's events so far, in order.
func (l *eventLog) of(t *testing.T, id string) []string {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		t.Fatal(l.err)
	}
	var out []string
	for _, ev := range l.evs {
		if ev.CommandId == id {
			out = append(out, fmt.Sprint(ev.Status.Value()))
		}
	}
	return out
}

// mqttDevice is the world's device as an agent connects it: subscribed to
// its commands, then announcing itself online.
type mqttDevice struct {
	c     *paho.Client
	id    uuid.UUID
	seq   int64
	inbox chan events.Command
}

func connectDevice(t *testing.T, e *commandEnv, d *fakeDevice, seq int64) *mqttDevice {
	t.Helper()
	tok := d.token(t, e.srv)
	conn, err := net.Dial("tcp", e.broker)
	if err != nil {
		t.Fatal(err)
	}
	m := &mqttDevice{id: d.id, seq: seq, inbox: make(chan events.Command, 64)}
	m.c = paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			var c events.Command
			if strings.HasSuffix(pr.Packet.Topic, "/"+devicetopic.Commands) && json.Unmarshal(pr.Packet.Payload, &c) == nil {
				select {
				case m.inbox <- c:
				default:
				}
			}
			return true, nil
		}}})
	status := func(state string) []byte {
		return fmt.Appendf(nil, `{"state":%q,"connection_seq":%d}`, state, seq)
	}
	ca, err := m.c.Connect(t.Context(), &paho.Connect{ClientID: d.id.String(), CleanStart: true, KeepAlive: 30,
		Username: d.id.String(), UsernameFlag: true, Password: []byte(tok), PasswordFlag: true,
		WillMessage: &paho.WillMessage{Topic: devicetopic.Topic(d.id, devicetopic.Status), QoS: 1, Payload: status("offline")}})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("device connect: %v %v", ca, err)
	}
	if _, err := m.c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: devicetopic.Topic(d.id, devicetopic.Commands), QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	m.publish(t, devicetopic.Status, status("online"))
	return m
}

func (m *mqttDevice) publish(t *testing.T, kind string, payload []byte) {
	t.Helper()
	pr, err := m.c.Publish(t.Context(), &paho.Publish{Topic: devicetopic.Topic(m.id, kind), QoS: 1, Payload: payload})
	if err != nil || (pr != nil && pr.ReasonCode >= 0x80) {
		t.Fatalf("publish %s: %v %v", kind, pr, err)
	}
}

// answer sends a CommandResult.
func (m *mqttDevice) answer(t *testing.T, id, status, reason string) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"id": id, "status": status, "error": reason, "ts": time.Now().UTC().Format(time.RFC3339Nano)})
	if reason == "" {
		b, _ = json.Marshal(map[string]any{"id": id, "status": status, "ts": time.Now().UTC().Format(time.RFC3339Nano)})
	}
	m.publish(t, devicetopic.CommandResults, b)
}

// waitFor waits until command id reaches the device, passing over the
// others: a command may arrive twice (sent when created, and again when the
// device's connect is seen), as the contract allows.
func (m *mqttDevice) waitFor(t *testing.T, id string) events.Command {
	t.Helper()
	deadline := time.After(testutil.Wait)
	for {
		select {
		case c := <-m.inbox:
			if c.Id == id {
				return c
			}
		case <-deadline:
			t.Fatalf("command %s did not reach the device", id)
		}
	}
}

// disconnect ends the connection the way a device losing power does: the
// broker publishes its will.
func (m *mqttDevice) disconnect(t *testing.T) {
	t.Helper()
	if err := m.c.Disconnect(&paho.Disconnect{ReasonCode: 0x04}); err != nil {
		t.Fatal(err)
	}
}

// sentOnReconnect reads how many commands the server sent devices because
// they connected, from its /metrics.
func sentOnReconnect(t *testing.T, srv *apptest.Server) float64 {
	t.Helper()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, `flock_commands_sent_total{reason="reconnect"} `); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatal("no flock_commands_sent_total{reason=\"reconnect\"} in /metrics")
	return 0
}

// reportAgentOf has d report a state over HTTP naming its agent version.
func reportAgentOf(t *testing.T, srv *apptest.Server, d *fakeDevice, seq int, version string) {
	t.Helper()
	must(t, srv, 204, "PATCH", "/device/v1/state", d.token(t, srv), map[string]any{"seq": seq, "agent_version": version})
}

func commandStatus(t *testing.T, srv *apptest.Server, token, id string) map[string]any {
	t.Helper()
	return must(t, srv, 200, "GET", "/v1/commands/"+id, token, nil)
}

// waitStatus waits until command id has status.
func waitStatus(t *testing.T, srv *apptest.Server, token, id, status string) map[string]any {
	t.Helper()
	var c map[string]any
	testutil.Eventually(t, "command "+id+" "+status, func() error {
		c = commandStatus(t, srv, token, id)
		if c["status"] != status {
			return fmt.Errorf("status %v", c["status"])
		}
		return nil
	})
	return c
}

// TestDeviceCommands sends commands to a device as a user would and the
// device as its agent would: refused input, delivery to a connected device
// and its answers, answers repeated, delivery on reconnect, expiry, the
// list, idempotent creation and the audit log.
func TestDeviceCommands(t *testing.T) {
	e := startCommandEnv(t)
	srv := e.srv
	w := newWorld(t, srv).withFleet(t)
	dev := w.device
	commands := "/v1/devices/" + dev.id.String() + "/commands"
	create := func(t *testing.T, token string, body map[string]any) (int, map[string]any) {
		t.Helper()
		status, _, out := call(t, srv, "POST", commands, token, body)
		return status, out
	}

	t.Run("refused", func(t *testing.T) {
		// The device has not reported an agent version yet.
		if status, out := create(t, w.developer, map[string]any{"type": "identify"}); status != 409 || out["code"] != "command_unsupported" {
			t.Fatalf("no agent version = %d %v", status, out)
		}
		reportAgentOf(t, srv, dev, 1, "1.0.0")
		for _, c := range []struct {
			name   string
			body   map[string]any
			status int
			code   string
			field  string
		}{
			{"restart_service on an agent older than 1.1.0", map[string]any{"type": "restart_service", "service": "app"}, 409, "command_unsupported", ""},
			{"restart_service without a service", map[string]any{"type": "restart_service"}, 400, "validation_failed", "/service"},
			{"a service on identify", map[string]any{"type": "identify", "service": "app"}, 400, "validation_failed", "/service"},
			{"unknown type", map[string]any{"type": "self_destruct"}, 400, "validation_failed", ""},
			{"expiry too short", map[string]any{"type": "identify", "expires_in": 5}, 400, "validation_failed", ""},
		} {
			status, out := create(t, w.developer, c.body)
			if status != c.status || out["code"] != c.code {
				t.Errorf("%s = %d %v, want %d %s", c.name, status, out, c.status, c.code)
				continue
			}
			if c.field != "" && !strings.Contains(fmt.Sprint(out["errors"]), c.field) {
				t.Errorf("%s: errors %v do not name %s", c.name, out["errors"], c.field)
			}
		}
		if status, out := create(t, w.viewer, map[string]any{"type": "identify"}); status != 403 {
			t.Errorf("viewer = %d %v, want 403", status, out)
		}
		if status, out := create(t, w.outsider, map[string]any{"type": "identify"}); status != 404 {
			t.Errorf("outsider = %d %v, want 404", status, out)
		}
		if status, _, out := call(t, srv, "GET", commands, w.outsider, nil); status != 404 {
			t.Errorf("outsider listing = %d %v, want 404", status, out)
		}
		if status, _, out := call(t, srv, "GET", "/v1/commands/"+uuid.NewString(), w.owner, nil); status != 404 {
			t.Errorf("unknown command = %d %v, want 404", status, out)
		}
		if items := must(t, srv, 200, "GET", commands, w.viewer, nil)["items"].([]any); len(items) != 0 {
			t.Errorf("refused commands were stored: %v", items)
		}
	})

	reportAgentOf(t, srv, dev, 2, "1.1.0")
	var online *mqttDevice
	var delivered string

	t.Run("to a connected device", func(t *testing.T) {
		online = connectDevice(t, e, dev, 1)
		status, c := create(t, w.developer, map[string]any{"type": "restart_service", "service": "app"})
		if status != 201 || c["status"] != "pending" || c["service"] != "app" || c["device_id"] != dev.id.String() || c["fleet_id"] != w.fleet ||
			c["created_by"].(map[string]any)["label"] != "dev@example.com" || c["delivered_at"] != nil {
			t.Fatalf("create = %d %v", status, c)
		}
		id := c["id"].(string)
		delivered = id
		exp, _ := time.Parse(time.RFC3339Nano, c["expires_at"].(string))
		created, _ := time.Parse(time.RFC3339Nano, c["created_at"].(string))
		if d := exp.Sub(created); d != time.Hour {
			t.Errorf("expires %s after creation, want the default hour", d)
		}
		got := online.waitFor(t, id)
		if got.ReservedType.Value() != "restart_service" || got.Service != "app" {
			t.Fatalf("the device got %+v", got)
		}
		online.answer(t, id, "received", "")
		d := waitStatus(t, srv, w.viewer, id, "delivered")
		if d["delivered_at"] == nil || d["completed_at"] != nil {
			t.Errorf("delivered command = %v", d)
		}
		online.answer(t, id, "succeeded", "")
		done := waitStatus(t, srv, w.viewer, id, "succeeded")
		if done["completed_at"] == nil || done["error"] != nil {
			t.Errorf("succeeded command = %v", done)
		}

		// Answers repeated (QoS 1 redelivery, or the device answering a
		// repeat of the command) change nothing and publish nothing. A
		// failed command after them is the marker that they were handled.
		online.answer(t, id, "received", "")
		online.answer(t, id, "failed", "too late")
		_, marker := create(t, w.developer, map[string]any{"type": "identify"})
		online.waitFor(t, marker["id"].(string))
		online.answer(t, marker["id"].(string), "failed", "no LED")
		failed := waitStatus(t, srv, w.viewer, marker["id"].(string), "failed")
		if failed["error"] != "no LED" {
			t.Errorf("failed command = %v", failed)
		}
		if again := commandStatus(t, srv, w.viewer, id); again["status"] != "succeeded" || again["completed_at"] != done["completed_at"] ||
			again["delivered_at"] != done["delivered_at"] || again["error"] != nil {
			t.Errorf("after repeated answers: %v, was %v", again, done)
		}
		testutil.Eventually(t, "the marker's events", func() error {
			if got := e.events.of(t, marker["id"].(string)); !slices.Equal(got, []string{"pending", "failed"}) {
				return fmt.Errorf("events %v", got)
			}
			return nil
		})
		if got := e.events.of(t, id); !slices.Equal(got, []string{"pending", "delivered", "succeeded"}) {
			t.Errorf("events of the command: %v, want pending, delivered, succeeded once each", got)
		}
	})
	if online == nil {
		t.FailNow()
	}

	t.Run("to a device that reconnects", func(t *testing.T) {
		online.disconnect(t)
		testutil.Eventually(t, "the device offline", testutil.Until(func() bool {
			return must(t, srv, 200, "GET", "/v1/devices/"+dev.id.String(), w.viewer, nil)["online"] == false
		}))
		_, c := create(t, w.developer, map[string]any{"type": "reboot", "expires_in": 600})
		id := c["id"].(string)
		if c["status"] != "pending" {
			t.Fatalf("create = %v", c)
		}
		back := connectDevice(t, e, dev, 2)
		t.Cleanup(func() { _ = back.c.Disconnect(&paho.Disconnect{}) })
		got := back.waitFor(t, id)
		if got.ReservedType.Value() != "reboot" {
			t.Fatalf("the reconnected device got %+v", got)
		}
		// It came because the device connected: the copy sent at creation
		// went to no one.
		if n := sentOnReconnect(t, srv); n < 1 {
			t.Errorf("flock_commands_sent_total{reason=reconnect} = %v", n)
		}
		// Back to back, the two answers may reach two ingester connections
		// and be applied either way round: succeeded first leaves received
		// nothing to change.
		back.answer(t, id, "received", "")
		back.answer(t, id, "succeeded", "")
		done := waitStatus(t, srv, w.viewer, id, "succeeded")
		if done["delivered_at"] == nil {
			t.Errorf("succeeded without delivered_at: %v", done)
		}
		testutil.Eventually(t, "its events", func() error {
			got := e.events.of(t, id)
			if slices.Equal(got, []string{"pending", "delivered", "succeeded"}) || slices.Equal(got, []string{"pending", "succeeded"}) {
				return nil
			}
			return fmt.Errorf("events %v", got)
		})
		back.disconnect(t)
	})

	t.Run("expiry", func(t *testing.T) {
		_, c := create(t, w.developer, map[string]any{"type": "identify", "expires_in": 10})
		id := c["id"].(string)
		// Ten seconds are the shortest expiry the API takes; the test moves
		// the clock of this one row instead of waiting them out.
		if _, err := srv.Pool(t).Exec(t.Context(), `UPDATE commands SET expires_at = now() WHERE id = $1`, id); err != nil {
			t.Fatal(err)
		}
		x := waitStatus(t, srv, w.viewer, id, "expired")
		if x["completed_at"] == nil || x["delivered_at"] != nil {
			t.Errorf("expired command = %v", x)
		}
		testutil.Eventually(t, "its events", func() error {
			if got := e.events.of(t, id); !slices.Equal(got, []string{"pending", "expired"}) {
				return fmt.Errorf("events %v", got)
			}
			return nil
		})
	})

	t.Run("list", func(t *testing.T) {
		all := must(t, srv, 200, "GET", commands, w.viewer, nil)["items"].([]any)
		if len(all) != 4 {
			t.Fatalf("%d commands, want 4: %v", len(all), all)
		}
		var statuses []string
		for _, c := range all {
			statuses = append(statuses, c.(map[string]any)["status"].(string))
		}
		if want := []string{"expired", "succeeded", "failed", "succeeded"}; !slices.Equal(statuses, want) {
			t.Errorf("newest first: %v, want %v", statuses, want)
		}
		ok := must(t, srv, 200, "GET", commands+"?status=succeeded", w.viewer, nil)["items"].([]any)
		if len(ok) != 2 || ok[1].(map[string]any)["id"] != delivered {
			t.Errorf("succeeded: %v", ok)
		}
		var paged []string
		page := must(t, srv, 200, "GET", commands+"?limit=3", w.viewer, nil)
		for {
			for _, c := range page["items"].([]any) {
				paged = append(paged, c.(map[string]any)["id"].(string))
			}
			next, _ := page["next_cursor"].(string)
			if next == "" {
				break
			}
			page = must(t, srv, 200, "GET", commands+"?limit=3&cursor="+next, w.viewer, nil)
		}
		if len(paged) != 4 || paged[3] != delivered {
			t.Errorf("pages: %v", paged)
		}
	})

	t.Run("idempotency key", func(t *testing.T) {
		key := http.Header{"Idempotency-Key": {"reboot-" + uuid.NewString()}}
		s1, _, first, err := srv.Send("POST", commands, w.developer, key, map[string]any{"type": "reboot"})
		if err != nil || s1 != 201 {
			t.Fatalf("first = %d %v %v", s1, first, err)
		}
		s2, hdr, second, err := srv.Send("POST", commands, w.developer, key, map[string]any{"type": "reboot"})
		if err != nil || s2 != 201 || second["id"] != first["id"] || hdr.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("repeat = %d %v %v (%v)", s2, second, hdr, err)
		}
		if n := len(must(t, srv, 200, "GET", commands+"?status=pending", w.viewer, nil)["items"].([]any)); n != 1 {
			t.Errorf("%d pending commands, want 1", n)
		}
	})

	t.Run("audit", func(t *testing.T) {
		evs := must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/audit-events?limit=200", w.admin, nil)["items"].([]any)
		var created, refused int
		found := false
		for _, ev := range evs {
			m := ev.(map[string]any)
			if m["operation"] != "device-command:create" {
				continue
			}
			switch m["outcome"] {
			case "success":
				created++
				if m["target_id"] == delivered {
					found = true
					if m["actor"].(map[string]any)["label"] != "dev@example.com" || m["status"] != float64(201) {
						t.Errorf("audit event = %v", m)
					}
				}
			case "failure":
				refused++
			}
		}
		// Five created (the idempotent repeat is not a sixth), and the
		// refusals of members: no agent, old agent, two bad services, the
		// viewer. (The spec validator answers the other two before the
		// guard runs; the outsider is no member.)
		if created != 5 || refused != 5 {
			t.Errorf("audit: %d created, %d refused; want 5 and 5", created, refused)
		}
		if !found {
			t.Errorf("no audit event names command %s as its target", delivered)
		}
	})
}
