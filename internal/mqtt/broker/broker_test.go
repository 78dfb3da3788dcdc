package broker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/mqtt/mqttauth"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
	"github.com/flock-io/flock-api/internal/testutil/promtest"
	"github.com/flock-io/flock-api/internal/testutil/syncbuf"
)

const (
	testIssuer      = "http://flock.test"
	serviceUser     = "ingester"
	servicePassword = "ingester-secret"
	// wait bounds every wait for something the broker or a client should do.
	wait = 10 * time.Second
)

func newTokens(t testing.TB, pool *pgxpool.Pool, issuer string) *devicetoken.Service {
	t.Helper()
	s, err := devicetoken.New(t.Context(), pool, devicetoken.Config{
		Issuer:        issuer,
		TokenEndpoint: issuer + "/device/v1/token",
		Log:           slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("devicetoken.New: %v", err)
	}
	return s
}

// env is a running broker with real device tokens.
type env struct {
	t      *testing.T
	pool   *pgxpool.Pool
	tokens *devicetoken.Service
	broker *Broker
	reg    *prometheus.Registry
	logs   *syncbuf.Buffer
}

// start runs a broker on a free port until the test ends; edit adjusts the
// configuration.
func start(t *testing.T, edit func(*Config)) *env {
	t.Helper()
	return startWith(t, edit, nil)
}

// startWith is start with prepare, when not nil, called on the broker
// before it serves (to set mochi's options the Config does not carry).
func startWith(t *testing.T, edit func(*Config), prepare func(*Broker)) *env {
	t.Helper()
	pool := pgtest.Pool(t)
	e := &env{t: t, pool: pool, tokens: newTokens(t, pool, testIssuer), reg: prometheus.NewRegistry(), logs: &syncbuf.Buffer{}}
	cfg := Config{
		Listen:          "127.0.0.1:0",
		ServiceUsername: serviceUser,
		ServicePassword: servicePassword,
		Log:             slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics:         e.reg,
		Devices:         pool,
	}
	if edit != nil {
		edit(&cfg)
	}
	b, err := New(cfg, e.tokens)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.broker = b
	if prepare != nil {
		prepare(b)
	}
	run(t, b)
	return e
}

// run serves b until the test ends and checks that Run then returns nil.
func run(t *testing.T, b *Broker) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(wait):
				runErr = errors.New("Run did not return after its context was cancelled")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return stop
}

// device registers a new device and issues it a token.
func (e *env) device() (uuid.UUID, string) {
	e.t.Helper()
	return addDevice(e.t, e.pool, e.tokens)
}

// addDevice registers a new device (in an organisation and fleet of its
// own: the broker only asks whether it exists) and issues it a token.
func addDevice(t testing.TB, pool *pgxpool.Pool, tokens *devicetoken.Service) (uuid.UUID, string) {
	t.Helper()
	ids := addDevices(t, pool, 1)
	tok, _, err := tokens.Issue(t.Context(), ids[0], uuid.New(), uuid.New())
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	return ids[0], tok
}

// addDevices registers n devices in one fleet.
func addDevices(t testing.TB, pool *pgxpool.Pool, n int) []uuid.UUID {
	t.Helper()
	org, fleet := uuid.New(), uuid.New()
	ids := make([]uuid.UUID, n)
	for i := range ids {
		ids[i] = uuid.New()
	}
	_, err := pool.Exec(t.Context(), `
		WITH o AS (INSERT INTO orgs (id, name) VALUES ($1::uuid, $4::text)),
		     f AS (INSERT INTO fleets (id, org_id, name, architecture) VALUES ($2::uuid, $1::uuid, 'fleet', 'amd64'))
		INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key)
		SELECT id, $1::uuid, $2::uuid, 'dev-' || id, 'generic-amd64', 'amd64', '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea
		FROM unnest($3::uuid[]) AS id`, org, fleet, ids, "org-"+org.String())
	if err != nil {
		t.Fatalf("add devices: %v", err)
	}
	return ids
}

// client is a paho client whose received messages arrive on inbox.
type client struct {
	*paho.Client
	inbox chan *paho.Publish
	// serverDisconnect receives the reason code of a DISCONNECT from the
	// broker (paho reports it on a goroutine of its own), after
	// disconnectReason holds its reason string.
	serverDisconnect chan byte
	disconnectReason atomic.Pointer[string]
}

// dial connects with cp. On a refused connection it returns the CONNACK and
// the error; paho has closed the connection by then.
func (e *env) dial(cp *paho.Connect) (*client, *paho.Connack, error) {
	return dial(e.t, e.broker.Addr(), cp)
}

func dial(t *testing.T, addr string, cp *paho.Connect) (*client, *paho.Connack, error) {
	t.Helper()
	return dialWith(t, addr, cp, nil)
}

// dialWith is dial with an AuthHandler, which paho needs to connect with
// an authentication method.
func dialWith(t *testing.T, addr string, cp *paho.Connect, auther paho.Auther) (*client, *paho.Connack, error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c := &client{inbox: make(chan *paho.Publish, 1024), serverDisconnect: make(chan byte, 1)}
	c.Client = paho.NewClient(paho.ClientConfig{
		Conn:        conn,
		AuthHandler: auther,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			select {
			case c.inbox <- pr.Packet:
			default: // a test that floods its own inbox sees the gap
			}
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) {
			if d.Properties != nil {
				c.disconnectReason.Store(&d.Properties.ReasonString)
			}
			select {
			case c.serverDisconnect <- d.ReasonCode:
			default:
			}
		},
	})
	if cp.Properties == nil {
		cp.Properties = &paho.ConnectProperties{}
	}
	if cp.Properties.ReceiveMaximum == nil {
		// paho sizes its inbound queue by this (65535 by default).
		rm := uint16(64)
		cp.Properties.ReceiveMaximum = &rm
	}
	cp.KeepAlive = 30
	cp.CleanStart = true
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	ca, err := c.Connect(ctx, cp)
	if err != nil {
		return nil, ca, err
	}
	t.Cleanup(func() {
		_ = c.Disconnect(&paho.Disconnect{})
		select {
		case <-c.Done():
		case <-time.After(wait):
			t.Errorf("paho client %s did not stop", cp.ClientID)
		}
	})
	return c, ca, nil
}

func deviceConnect(id uuid.UUID, token string) *paho.Connect {
	return &paho.Connect{
		ClientID: id.String(), Username: id.String(), UsernameFlag: true,
		Password: []byte(token), PasswordFlag: true,
	}
}

func serviceConnect(clientID string) *paho.Connect {
	return &paho.Connect{
		ClientID: clientID, Username: serviceUser, UsernameFlag: true,
		Password: []byte(servicePassword), PasswordFlag: true,
	}
}

func (e *env) connectDevice(id uuid.UUID, token string) *client {
	e.t.Helper()
	c, _, err := e.dial(deviceConnect(id, token))
	if err != nil {
		e.t.Fatalf("connect device %s: %v", id, err)
	}
	return c
}

func (e *env) connectService(clientID string) *client {
	e.t.Helper()
	c, _, err := e.dial(serviceConnect(clientID))
	if err != nil {
		e.t.Fatalf("connect service %s: %v", clientID, err)
	}
	return c
}

// publish sends at QoS 1 and returns the PUBACK reason code.
func (c *client) publish(t *testing.T, topic, payload string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	pr, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: wrap(topic, payload)})
	if pr == nil {
		t.Fatalf("publish to %s: %v", topic, err)
	}
	return pr.ReasonCode
}

// subscribe asks for one filter at QoS 1 and returns the SUBACK reason code.
func (c *client) subscribe(t *testing.T, filter string) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: 1}}})
	if sa == nil || len(sa.Reasons) != 1 {
		t.Fatalf("subscribe to %s: %v", filter, err)
	}
	return sa.Reasons[0]
}

// next returns the next message c receives, its payload unwrapped.
func (c *client) next(t *testing.T) *paho.Publish {
	t.Helper()
	select {
	case p := <-c.inbox:
		p.Payload = []byte(unwrap(p.Topic, p.Payload))
		return p
	case <-time.After(wait):
		t.Fatal("no message arrived")
		return nil
	}
}

func (c *client) alive() bool {
	select {
	case <-c.Done():
		return false
	default:
		return true
	}
}

func topic(id uuid.UUID, kind string) string { return "flock/v1/devices/" + id.String() + "/" + kind }

func TestConnect(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	devA, tokA := e.device()
	devB, _ := e.device()
	// devicetoken has no clock to turn, so an expired token cannot be made
	// here; these two are refused by the same ErrInvalidToken path.
	foreign := newTokens(t, pgtest.Pool(t), "http://other.test")
	tokForeignKey, _, err := foreign.Issue(t.Context(), devA, uuid.New(), uuid.New())
	if err != nil {
		t.Fatal(err)
	}
	sameKeys := newTokens(t, e.pool, "http://other.test")
	tokOtherIssuer, _, err := sameKeys.Issue(t.Context(), devA, uuid.New(), uuid.New())
	if err != nil {
		t.Fatal(err)
	}

	withWill := func(cp *paho.Connect, topic string) *paho.Connect {
		cp.WillMessage = &paho.WillMessage{Topic: topic, QoS: 1, Retain: true, Payload: wrap(topic, "offline")}
		return cp
	}
	a := devA.String()
	tests := []struct {
		name   string
		cp     *paho.Connect
		code   byte
		reason string // metric label and log attribute of a refusal
	}{
		{"device with its own token", deviceConnect(devA, tokA), 0x00, ""},
		{"garbage password", deviceConnect(devA, "not-a-jwt"), 0x86, mqttauth.ReasonInvalidToken},
		{"no password", &paho.Connect{ClientID: a, Username: a, UsernameFlag: true}, 0x86, mqttauth.ReasonInvalidToken},
		{"token signed by another issuer's key", deviceConnect(devA, tokForeignKey), 0x86, mqttauth.ReasonInvalidToken},
		{"token with our key but another issuer", deviceConnect(devA, tokOtherIssuer), 0x86, mqttauth.ReasonInvalidToken},
		{"user name not a uuid", &paho.Connect{ClientID: "dev", Username: "dev", UsernameFlag: true, Password: []byte(tokA), PasswordFlag: true}, 0x86, mqttauth.ReasonMalformedUsername},
		{"user name an uppercase uuid", &paho.Connect{ClientID: strings.ToUpper(a), Username: strings.ToUpper(a), UsernameFlag: true, Password: []byte(tokA), PasswordFlag: true}, 0x86, mqttauth.ReasonMalformedUsername},
		{"token of device A under user name B", deviceConnect(devB, tokA), 0x87, mqttauth.ReasonDeviceMismatch},
		{"client id differs from user name", &paho.Connect{ClientID: devB.String(), Username: a, UsernameFlag: true, Password: []byte(tokA), PasswordFlag: true}, 0x87, mqttauth.ReasonClientID},
		{"empty client id", &paho.Connect{Username: a, UsernameFlag: true, Password: []byte(tokA), PasswordFlag: true}, 0x87, mqttauth.ReasonClientID},
		{"will on its own status", withWill(deviceConnect(devA, tokA), topic(devA, "status")), 0x00, ""},
		{"will on its own state", withWill(deviceConnect(devA, tokA), topic(devA, "state")), 0x87, mqttauth.ReasonWill},
		{"will on another device's status", withWill(deviceConnect(devA, tokA), topic(devB, "status")), 0x87, mqttauth.ReasonWill},
		{"service credentials", serviceConnect("ingester-1"), 0x00, ""},
		{"wrong service password", &paho.Connect{ClientID: "ingester-1", Username: serviceUser, UsernameFlag: true, Password: []byte("guess"), PasswordFlag: true}, 0x86, mqttauth.ReasonServicePassword},
		{"service under a device uuid as client id", serviceConnect(devB.String()), 0x87, mqttauth.ReasonClientID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before float64
			if tt.reason != "" {
				before = promtest.Sum(t, e.reg, "flock_mqtt_auth_refused_total", "reason", tt.reason)
			}
			c, ca, err := dial(t, e.broker.Addr(), tt.cp)
			if ca == nil {
				t.Fatalf("no CONNACK: %v", err)
			}
			if ca.ReasonCode != tt.code {
				t.Fatalf("CONNACK reason code = %#x, want %#x (err %v)", ca.ReasonCode, tt.code, err)
			}
			if tt.code == 0 {
				if c == nil || err != nil {
					t.Fatalf("connect: %v", err)
				}
				if ca.Properties == nil || ca.Properties.MaximumPacketSize == nil || *ca.Properties.MaximumPacketSize != defaultMaxPacketSize {
					t.Errorf("CONNACK does not announce Maximum Packet Size %d: %+v", defaultMaxPacketSize, ca.Properties)
				}
				// Disconnect now so the next row's device is not a takeover.
				_ = c.Disconnect(&paho.Disconnect{})
				<-c.Done()
				return
			}
			if got := promtest.Sum(t, e.reg, "flock_mqtt_auth_refused_total", "reason", tt.reason); got != before+1 {
				t.Errorf("flock_mqtt_auth_refused_total{reason=%q} = %v, want %v", tt.reason, got, before+1)
			}
			who := "username=" + tt.cp.Username
			if devicetopic.IsCanonicalUUID(tt.cp.Username) {
				who = "device=" + tt.cp.Username
			}
			logs := e.logs.String()
			if !strings.Contains(logs, "reason="+tt.reason) || !strings.Contains(logs, who) {
				t.Errorf("no refusal log with %s and reason=%s in:\n%s", who, tt.reason, logs)
			}
		})
	}
}

// rawConnect sends a CONNECT of the given protocol version (4 = 3.1.1, 5)
// and returns the connection and the CONNACK's reason (return) code.
func rawConnect(addr string, version byte, clientID, username, password string) (net.Conn, byte, error) {
	return rawConnectWith(addr, version, packets.ConnectParams{
		ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 300, ClientIdentifier: clientID,
		UsernameFlag: true, Username: []byte(username), PasswordFlag: true, Password: []byte(password),
	})
}

// rawConnectWith is rawConnect with the CONNECT's parameters as given.
func rawConnectWith(addr string, version byte, params packets.ConnectParams) (net.Conn, byte, error) {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, 0, err
	}
	pk := packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Connect},
		ProtocolVersion: version,
		Connect:         params,
	}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		conn.Close()
		return nil, 0, err
	}
	_ = conn.SetDeadline(time.Now().Add(wait))
	if _, err := conn.Write(buf.Bytes()); err != nil {
		conn.Close()
		return nil, 0, err
	}
	r := bufio.NewReader(conn)
	first, err := r.ReadByte()
	if err != nil {
		conn.Close()
		return nil, 0, fmt.Errorf("read CONNACK: %w", err)
	}
	if first>>4 != packets.Connack {
		conn.Close()
		return nil, 0, fmt.Errorf("got packet type %d, want CONNACK", first>>4)
	}
	n, _, err := packets.DecodeLength(r)
	if err != nil {
		conn.Close()
		return nil, 0, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil || n < 2 {
		conn.Close()
		return nil, 0, fmt.Errorf("read CONNACK body: %v", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, body[1], nil
}

func TestConnectMQTT311(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	devA, tokA := e.device()
	devB, _ := e.device()
	tests := []struct {
		name                        string
		clientID, username, passwrd string
		code                        byte
	}{
		{"device with its own token", devA.String(), devA.String(), tokA, 0x00},
		{"garbage password: bad user name or password", devA.String(), devA.String(), "garbage", 0x04},
		{"token of another device: not authorized", devB.String(), devB.String(), tokA, 0x05},
		{"service", "ingester-v3", serviceUser, servicePassword, 0x00},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, code, err := rawConnect(e.broker.Addr(), 4, tt.clientID, tt.username, tt.passwrd)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if code != tt.code {
				t.Errorf("CONNACK return code = %#x, want %#x", code, tt.code)
			}
		})
	}
}

func TestPublishACL(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	devA, tokA := e.device()
	devB, _ := e.device()
	ingest := e.connectService("ingester-1")
	if code := ingest.subscribe(t, "$share/ingest/flock/v1/devices/+/state"); code != 0x01 {
		t.Fatalf("service shared subscription: SUBACK %#x", code)
	}
	a := e.connectDevice(devA, tokA)

	if code := a.publish(t, topic(devA, "state"), "first"); code != 0x00 {
		t.Fatalf("publish own state: PUBACK %#x", code)
	}
	if p := ingest.next(t); string(p.Payload) != "first" || p.Topic != topic(devA, "state") {
		t.Fatalf("service received %q on %s, want first on own state", p.Payload, p.Topic)
	}

	refused := []struct{ name, topic string }{
		{"another device's state", topic(devB, "state")},
		{"its own target", topic(devA, "target")},
		{"its own commands", topic(devA, "commands")},
		{"an unknown kind", topic(devA, "secrets")},
		{"a deeper level", topic(devA, "state") + "/x"},
		{"outside the device tree", "flock/v1/other"},
		{"uppercase uuid", "flock/v1/devices/" + strings.ToUpper(devA.String()) + "/state"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			before := promtest.Sum(t, e.reg, "flock_mqtt_publish_refused_total", "reason", "acl")
			if code := a.publish(t, tt.topic, "refused"); code != 0x87 {
				t.Errorf("PUBACK %#x, want 0x87", code)
			}
			if got := promtest.Sum(t, e.reg, "flock_mqtt_publish_refused_total", "reason", "acl"); got != before+1 {
				t.Errorf("flock_mqtt_publish_refused_total{reason=acl} = %v, want %v", got, before+1)
			}
		})
	}

	// Nothing refused reached the service: the next message is this one.
	if code := a.publish(t, topic(devA, "state"), "second"); code != 0x00 {
		t.Fatalf("publish own state: PUBACK %#x", code)
	}
	if p := ingest.next(t); string(p.Payload) != "second" {
		t.Fatalf("service received %q, want second", p.Payload)
	}
	if !a.alive() {
		t.Error("device connection closed after refused publishes")
	}
}

func TestSubscribeACL(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	devA, tokA := e.device()
	devB, _ := e.device()
	a := e.connectDevice(devA, tokA)
	svc := e.connectService("ingester-1")

	tests := []struct {
		name   string
		c      *client
		filter string
		code   byte
	}{
		{"device: own target", a, topic(devA, "target"), 0x01},
		{"device: own commands", a, topic(devA, "commands"), 0x01},
		{"device: another device's target", a, topic(devB, "target"), 0x87},
		{"device: every device's target", a, "flock/v1/devices/+/target", 0x87},
		{"device: own state", a, topic(devA, "state"), 0x87},
		{"device: own subtree", a, "flock/v1/devices/" + devA.String() + "/#", 0x87},
		{"device: everything", a, "#", 0x87},
		{"device: shared own target", a, "$share/g/" + topic(devA, "target"), 0x87},
		{"device: $SYS", a, "$SYS/#", 0x87},
		{"service: shared state", svc, "$share/ingest/flock/v1/devices/+/state", 0x01},
		{"service: shared status", svc, "$share/ingest/flock/v1/devices/+/status", 0x01},
		{"service: plain telemetry", svc, "flock/v1/devices/+/telemetry", 0x01},
		{"service: shared target", svc, "$share/ingest/flock/v1/devices/+/target", 0x87},
		{"service: every kind", svc, "flock/v1/devices/+/+", 0x87},
		{"service: everything", svc, "#", 0x87},
		{"service: shared everything", svc, "$share/ingest/#", 0x87},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code := tt.c.subscribe(t, tt.filter); code != tt.code {
				t.Errorf("SUBACK %#x, want %#x", code, tt.code)
			}
		})
	}
}

func TestServicePublishesToDevice(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	devA, tokA := e.device()
	devB, tokB := e.device()
	a := e.connectDevice(devA, tokA)
	b := e.connectDevice(devB, tokB)
	for _, c := range []*client{a, b} {
		id := uuid.MustParse(c.ClientID())
		for _, kind := range []string{"target", "commands"} {
			if code := c.subscribe(t, topic(id, kind)); code != 0x01 {
				t.Fatalf("subscribe %s: SUBACK %#x", kind, code)
			}
		}
	}
	svc := e.connectService("ingester-1")

	if code := svc.publish(t, topic(devA, "target"), "v42"); code != 0x00 {
		t.Fatalf("service publish to target: PUBACK %#x", code)
	}
	if p := a.next(t); p.Topic != topic(devA, "target") || string(p.Payload) != "v42" {
		t.Fatalf("device A received %q on %s", p.Payload, p.Topic)
	}
	if code := svc.publish(t, topic(devA, "state"), "forged"); code != 0x87 {
		t.Errorf("service publish to a device's state: PUBACK %#x, want 0x87", code)
	}
	if code := svc.publish(t, topic(devB, "commands"), "reboot"); code != 0x00 {
		t.Fatalf("service publish to commands: PUBACK %#x", code)
	}
	// B's first message is its command, so A's target never reached it.
	if p := b.next(t); p.Topic != topic(devB, "commands") || string(p.Payload) != "reboot" {
		t.Fatalf("device B received %q on %s", p.Payload, p.Topic)
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	const burst = 5
	// One token a second: the loop below finishes long before a second
	// token could make every publish pass.
	e := start(t, func(c *Config) { c.MessagesPerSecond = 1; c.Burst = burst })
	devA, tokA := e.device()
	a := e.connectDevice(devA, tokA)
	svc := e.connectService("ingester-1")
	if code := svc.subscribe(t, "$share/ingest/flock/v1/devices/+/telemetry"); code != 0x01 {
		t.Fatalf("SUBACK %#x", code)
	}

	const total = burst + 20
	var accepted, quota int
	passed := map[string]bool{}
	for i := range total {
		switch code := a.publish(t, topic(devA, "telemetry"), fmt.Sprint(i)); code {
		case 0x00:
			accepted++
			passed[fmt.Sprint(i)] = true
		case 0x97:
			quota++
		default:
			t.Fatalf("publish %d: PUBACK %#x", i, code)
		}
	}
	t.Logf("%d accepted, %d refused with 0x97", accepted, quota)
	if accepted < burst || quota == 0 {
		t.Errorf("accepted %d (want at least the burst %d), refused %d (want some)", accepted, burst, quota)
	}
	if got := promtest.Sum(t, e.reg, "flock_mqtt_publish_refused_total", "reason", "rate"); got != float64(quota) {
		t.Errorf("flock_mqtt_publish_refused_total{reason=rate} = %v, want %d", got, quota)
	}
	// Only what was accepted went through.
	for range accepted {
		if p := svc.next(t); !passed[string(p.Payload)] {
			t.Errorf("service received refused message %q", p.Payload)
		}
	}

	// The connection stays up and still works.
	if !a.alive() {
		t.Fatal("device connection closed")
	}
	if code := a.subscribe(t, topic(devA, "target")); code != 0x01 {
		t.Errorf("subscribe after rate limiting: SUBACK %#x", code)
	}

	// The service is not limited.
	for i := range total {
		if code := svc.publish(t, topic(devA, "target"), fmt.Sprint(i)); code != 0x00 {
			t.Fatalf("service publish %d: PUBACK %#x", i, code)
		}
	}
}

func TestRateLimitBucketReleased(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	devA, tokA := e.device()
	a := e.connectDevice(devA, tokA)
	if code := a.publish(t, topic(devA, "events"), "x"); code != 0 {
		t.Fatalf("PUBACK %#x", code)
	}
	if n := e.broker.limits.len(); n != 1 {
		t.Fatalf("%d buckets while connected, want 1", n)
	}
	_ = a.Disconnect(&paho.Disconnect{})
	testutil.Eventually(t, "the bucket released after the device disconnected", testutil.Until(func() bool { return e.broker.limits.len() == 0 }))
}

func TestWillAndRetain(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	devA, tokA := e.device()
	svc := e.connectService("ingester-1")
	if code := svc.subscribe(t, "$share/ingest/flock/v1/devices/+/status"); code != 0x01 {
		t.Fatalf("SUBACK %#x", code)
	}
	cp := deviceConnect(devA, tokA)
	cp.WillMessage = &paho.WillMessage{Topic: topic(devA, "status"), QoS: 1, Retain: true, Payload: wrap(topic(devA, "status"), "offline")}
	a, _, err := e.dial(cp)
	if err != nil {
		t.Fatal(err)
	}
	pr, err := a.Publish(t.Context(), &paho.Publish{Topic: topic(devA, "status"), QoS: 1, Retain: true, Payload: wrap(topic(devA, "status"), "online")})
	if err != nil || pr.ReasonCode != 0 {
		t.Fatalf("publish retained status: %v %+v", err, pr)
	}
	if p := svc.next(t); string(p.Payload) != "online" {
		t.Fatalf("service received %q, want online", p.Payload)
	}
	a.TerminateConnectionForTest()
	if p := svc.next(t); string(p.Payload) != "offline" || p.Topic != topic(devA, "status") {
		t.Fatalf("service received %q on %s, want the will", p.Payload, p.Topic)
	}
	if n := len(e.broker.server.Topics.Messages("flock/#")); n != 0 {
		t.Errorf("broker retained %d device messages, want none", n)
	}
}

// A device that connects again while the broker still holds its old
// connection (one a network dropped without a word, or a reboot faster
// than the broker noticed the old socket close) takes its session over.
// The old connection ended without a normal DISCONNECT, so its will goes
// out ([MQTT-3.1.2-8]; EMQX fixed the same bug as emqx/emqx#10551): the
// ingester records that connection's end. Mochi sent it or not depending
// on where the old connection's reader was: stopped between two packets,
// it saw the connection closed and ended as if the client had said
// goodbye (internal/simulate's reboot lost its disconnect that way, once,
// in CI). The old connection here sends a backlog of QoS 0 publishes, so
// that its reader is between packets when the takeover stops it.
func TestWillOnTakeover(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	svc := e.connectService("ingester-1")
	if code := svc.subscribe(t, "$share/ingest/flock/v1/devices/+/status"); code != 0x01 {
		t.Fatalf("SUBACK %#x", code)
	}
	for i := range 10 {
		dev, tok := e.device()
		status := topic(dev, "status")
		old, code, err := rawConnectWith(e.broker.Addr(), 5, packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Keepalive: 300, ClientIdentifier: dev.String(),
			UsernameFlag: true, Username: []byte(dev.String()), PasswordFlag: true, Password: []byte(tok),
			WillFlag: true, WillTopic: status, WillQos: 1, WillPayload: wrap(status, "offline"),
		})
		if err != nil || code != 0 {
			t.Fatalf("connection %d: CONNACK %#x, %v", i, code, err)
		}
		var backlog bytes.Buffer
		for range 2000 {
			pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, ProtocolVersion: 5,
				TopicName: topic(dev, "telemetry"), Payload: wrap(topic(dev, "telemetry"), "x")}
			if err := pk.PublishEncode(&backlog); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := old.Write(backlog.Bytes()); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		next := e.connectDevice(dev, tok)
		if p := svc.next(t); p.Topic != status || string(p.Payload) != "offline" {
			t.Fatalf("connection %d: service received %q on %s, want the old connection's will", i, p.Payload, p.Topic)
		}
		_ = next.Disconnect(&paho.Disconnect{})
		old.Close()
	}
}

func TestMaxPacketSize(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *Config) { c.MaxPacketSize = 1024 })
	devA, tokA := e.device()
	c, ca, err := e.dial(deviceConnect(devA, tokA))
	if err != nil {
		t.Fatal(err)
	}
	if ca.Properties == nil || ca.Properties.MaximumPacketSize == nil || *ca.Properties.MaximumPacketSize != 1024 {
		t.Errorf("CONNACK Maximum Packet Size = %+v, want 1024", ca.Properties)
	}
	if code := c.publish(t, topic(devA, "logs"), strings.Repeat("x", 800)); code != 0 {
		t.Fatalf("publish under the limit: PUBACK %#x", code)
	}
	// paho does not enforce the announced limit itself; the broker ends the
	// connection.
	_, _ = c.Publish(t.Context(), &paho.Publish{Topic: topic(devA, "logs"), QoS: 0, Payload: bytes.Repeat([]byte("x"), 2048)})
	select {
	case <-c.Done():
	case <-time.After(wait):
		t.Fatal("connection still up after an oversized packet")
	}
}

func TestRunStops(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	tokens := newTokens(t, pool, testIssuer)
	b, err := New(Config{Listen: "127.0.0.1:0", Log: slog.New(slog.DiscardHandler), Devices: pool}, tokens)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, b)

	id, tok := addDevice(t, pool, tokens)
	c, _, err := dial(t, b.Addr(), deviceConnect(id, tok))
	if err != nil {
		t.Fatal(err)
	}
	// A socket that never sends CONNECT must not hold up shutdown until
	// connectTimeout.
	idle, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	// Connected means accepted and being handled, which the broker's own
	// client count cannot show for a socket without CONNECT.
	testutil.Eventually(t, "the listener to track both connections", func() error {
		b.ln.mu.Lock()
		n := len(b.ln.conns)
		b.ln.mu.Unlock()
		if n != 2 {
			return fmt.Errorf("listener tracks %d connections, want 2", n)
		}
		return nil
	})

	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	select {
	case <-c.Done():
	case <-time.After(wait):
		t.Fatal("client still connected after Run returned")
	}
	select {
	case code := <-c.serverDisconnect:
		if code != packets.ErrServerShuttingDown.Code {
			t.Errorf("DISCONNECT reason %#x, want 0x8b server shutting down", code)
		}
	case <-time.After(wait):
		t.Error("no DISCONNECT from the broker")
	}
	_ = idle.SetReadDeadline(time.Now().Add(wait))
	var ne net.Error
	if _, err := idle.Read(make([]byte, 1)); errors.As(err, &ne) && ne.Timeout() {
		t.Errorf("connection without CONNECT still open after Run returned: %v", err)
	}
	if conn, err := net.Dial("tcp", b.Addr()); err == nil {
		conn.Close()
		t.Errorf("port %s still accepts connections after Run returned", b.Addr())
	}
	if err := b.Run(t.Context()); err == nil {
		t.Error("second Run returned nil")
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	tokens := newTokens(t, pool, testIssuer)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	tests := []struct {
		name string
		cfg  Config
		v    mqttauth.Verifier
	}{
		{"port taken", Config{Listen: taken.Addr().String(), Devices: pool}, tokens},
		{"no listen address", Config{Devices: pool}, tokens},
		{"service user name is a uuid", Config{Listen: "127.0.0.1:0", ServiceUsername: uuid.NewString(), ServicePassword: "x", Devices: pool}, tokens},
		{"service user without password", Config{Listen: "127.0.0.1:0", ServiceUsername: "svc", Devices: pool}, tokens},
		{"service password without user", Config{Listen: "127.0.0.1:0", ServicePassword: "x", Devices: pool}, tokens},
		{"negative rate", Config{Listen: "127.0.0.1:0", MessagesPerSecond: -1, Devices: pool}, tokens},
		{"nil verifier", Config{Listen: "127.0.0.1:0", Devices: pool}, nil},
		{"no device pool", Config{Listen: "127.0.0.1:0"}, tokens},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Log = slog.New(slog.DiscardHandler)
			if b, err := New(tt.cfg, tt.v); err == nil {
				t.Errorf("New succeeded, listening on %s", b.Addr())
			} else {
				t.Log(err)
			}
		})
	}

	t.Run("metrics registered twice", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		cfg := Config{Listen: "127.0.0.1:0", Log: slog.New(slog.DiscardHandler), Metrics: reg, Devices: pool}
		b, err := New(cfg, tokens)
		if err != nil {
			t.Fatal(err)
		}
		run(t, b)
		if _, err := New(cfg, tokens); err == nil {
			t.Error("second broker on the same registry: New succeeded")
		}
	})
}

// A subscriber that acknowledges late, with a small Receive Maximum, gets
// every message: mochi parks what exceeds the window and sends it as
// PUBACKs free slots (upstream mochi stalled here; see
// third_party/mochi-mqtt/FLOCK.md).
func TestReceiveMaximumWithLateAcks(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *Config) { c.MessagesPerSecond = 10000; c.Burst = 10000 })
	dev, tok := e.device()
	d := e.connectDevice(dev, tok)

	conn, err := net.Dial("tcp", e.broker.Addr())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *paho.Publish, 1000)
	var sub *paho.Client
	sub = paho.NewClient(paho.ClientConfig{
		Conn:                       conn,
		EnableManualAcknowledgment: true,
		SendAcksInterval:           time.Millisecond,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- pr.Packet
			return true, nil
		}},
	})
	recvMax := uint16(4)
	ca, err := sub.Connect(t.Context(), &paho.Connect{ClientID: "late-acker", CleanStart: true, KeepAlive: 30,
		UsernameFlag: true, Username: serviceUser, PasswordFlag: true, Password: []byte(servicePassword),
		Properties: &paho.ConnectProperties{ReceiveMaximum: &recvMax}})
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %v", ca, err)
	}
	t.Cleanup(func() { _ = sub.Disconnect(&paho.Disconnect{}) })
	if _, err := sub.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "flock/v1/devices/+/telemetry", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}

	const n = 200
	for i := range n {
		if code := d.publish(t, topic(dev, "telemetry"), fmt.Sprint(i)); code != 0 {
			t.Fatalf("publish %d: PUBACK %#x", i, code)
		}
	}
	// Acknowledge in batches of the window, as the ingester does.
	seen := map[string]bool{}
	var held []*paho.Publish
	for len(seen) < n {
		select {
		case p := <-got:
			seen[string(p.Payload)] = true
			held = append(held, p)
			if len(held) == int(recvMax) {
				for _, h := range held {
					if err := sub.Ack(h); err != nil {
						t.Fatal(err)
					}
				}
				held = held[:0]
			}
		case <-time.After(wait):
			t.Fatalf("received %d of %d messages, then nothing", len(seen), n)
		}
	}
}

// A subscriber that resumes a session holding a message it never
// acknowledged can subscribe again: the broker numbered that message, and
// client and server number their packets independently (MQTT 5 2.2.1), so
// the new connection's SUBSCRIBE may carry the same identifier
// (third_party/mochi-mqtt/FLOCK.md, packetIDInUse).
func TestResumedSessionSubscribes(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	dev, tok := e.device()
	d := e.connectDevice(dev, tok)
	expiry := uint32(60)

	connect := func() (*paho.Client, chan *paho.Publish, *paho.Connack) {
		conn, err := net.Dial("tcp", e.broker.Addr())
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan *paho.Publish, 16)
		c := paho.NewClient(paho.ClientConfig{
			Conn:                       conn,
			EnableManualAcknowledgment: true,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				got <- pr.Packet
				return true, nil
			}},
		})
		ca, err := c.Connect(t.Context(), &paho.Connect{ClientID: "resuming", CleanStart: false, KeepAlive: 30,
			UsernameFlag: true, Username: serviceUser, PasswordFlag: true, Password: []byte(servicePassword),
			Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry}})
		if err != nil || ca.ReasonCode != 0 {
			t.Fatalf("connect: %v %v", ca, err)
		}
		return c, got, ca
	}
	subscribe := func(c *paho.Client) []byte {
		sa, err := c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "$share/g/flock/v1/devices/+/state", QoS: 1}}})
		if sa == nil {
			t.Fatalf("subscribe: %v", err)
		}
		return sa.Reasons
	}

	first, got, _ := connect()
	if r := subscribe(first); r[0] != 1 {
		t.Fatalf("first SUBACK %x", r)
	}
	if code := d.publish(t, topic(dev, "state"), `{"seq":1}`); code != 0 {
		t.Fatalf("PUBACK %#x", code)
	}
	select {
	case <-got: // held, never acknowledged
	case <-time.After(wait):
		t.Fatal("no message")
	}
	_ = first.Disconnect(&paho.Disconnect{})
	<-first.Done()

	second, got, ca := connect()
	t.Cleanup(func() { _ = second.Disconnect(&paho.Disconnect{}) })
	if !ca.SessionPresent {
		t.Fatal("session not resumed")
	}
	if r := subscribe(second); r[0] != 1 {
		t.Fatalf("SUBACK on the resumed session %x, want 01", r)
	}
	select {
	case p := <-got:
		if string(p.Payload) != `{"seq":1}` {
			t.Fatalf("redelivered %s", p.Payload)
		}
	case <-time.After(wait):
		t.Fatal("the unacknowledged message was not redelivered")
	}
}

// stallConn stops reading once stalled is set, as a subscriber that hangs
// does; release lets its reader go at the end of the test.
type stallConn struct {
	net.Conn
	stalled atomic.Bool
	release chan struct{}
}

func (c *stallConn) Read(b []byte) (int, error) {
	if c.stalled.Load() {
		<-c.release
		return 0, io.EOF
	}
	return c.Conn.Read(b)
}

// A subscriber that stops reading fills its outbound queue; what mochi then
// drops is counted, and publishers go on being served.
func TestDroppedMessagesCounted(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *Config) { c.MessagesPerSecond = 1e6; c.Burst = 1e6 })
	dev, tok := e.device()
	d := e.connectDevice(dev, tok)

	raw, err := net.Dial("tcp", e.broker.Addr())
	if err != nil {
		t.Fatal(err)
	}
	conn := &stallConn{Conn: raw, release: make(chan struct{})}
	sub := paho.NewClient(paho.ClientConfig{Conn: conn})
	ca, err := sub.Connect(t.Context(), serviceConnect("stalled-subscriber"))
	if err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect: %v %v", ca, err)
	}
	t.Cleanup(func() { close(conn.release); _ = raw.Close() })
	if _, err := sub.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic(dev, "logs"), QoS: 0}}}); err != nil {
		t.Fatal(err)
	}
	conn.stalled.Store(true)

	// Enough to fill the socket buffers and then the 1024-packet queue
	// (log lines: the largest text a device payload may carry).
	payload := strings.Repeat("x", 16<<10)
	for i := 0; promtest.Sum(t, e.reg, "flock_mqtt_messages_dropped_total", "reason", "queue_full") == 0; i++ {
		if i == 20000 {
			t.Fatal("20000 messages to a subscriber that reads nothing, none dropped")
		}
		if code := d.publish(t, topic(dev, "logs"), payload); code != 0 {
			t.Fatalf("publish %d: PUBACK %#x", i, code)
		}
	}
}

// A subscriber that acknowledges nothing holds at most mochi's
// MaximumInflight messages (sent and parked); what the broker accepts
// beyond that is dropped and counted as queue_full, and what it kept still
// arrives in order (upstream mochi dropped these without a hook).
func TestInflightLimitCounted(t *testing.T) {
	t.Parallel()
	const limit, recvMax, over = 16, 4, 5
	e := startWith(t, func(c *Config) { c.MessagesPerSecond = 1e6; c.Burst = 1e6 },
		func(b *Broker) { b.server.Options.Capabilities.MaximumInflight = limit })
	dev, tok := e.device()
	d := e.connectDevice(dev, tok)
	sub := newLateSubscriber(t, e, "holds-everything", recvMax, topic(dev, "telemetry"))

	for i := range limit + over {
		if code := d.publish(t, topic(dev, "telemetry"), fmt.Sprint(i)); code != 0 {
			t.Fatalf("publish %d: PUBACK %#x", i, code)
		}
	}
	// The broker acknowledges a publish before it delivers it.
	testutil.Eventually(t, "the drops counted", func() error {
		if n := promtest.Sum(t, e.reg, "flock_mqtt_messages_dropped_total", "reason", "queue_full"); n < float64(over) {
			return fmt.Errorf("flock_mqtt_messages_dropped_total{reason=queue_full} = %v, want %d", n, over)
		}
		return nil
	})

	// Acknowledged as they come, the kept messages arrive in order; once
	// the subscriber's store is empty, the next message published follows
	// them, so the dropped ones are gone.
	for i := range limit + 1 {
		want := fmt.Sprint(i)
		if i == limit {
			want = "last"
			testutil.Eventually(t, "the subscriber's acknowledgements to empty its inflight store", testutil.Until(func() bool {
				cl, ok := e.broker.server.Clients.Get(sub.clientID)
				return ok && cl.State.Inflight.Len() == 0
			}))
			if code := d.publish(t, topic(dev, "telemetry"), want); code != 0 {
				t.Fatalf("publish %s: PUBACK %#x", want, code)
			}
		}
		sub.ack(sub.expect(want))
	}
	if n := promtest.Sum(t, e.reg, "flock_mqtt_messages_dropped_total"); n != over {
		t.Errorf("flock_mqtt_messages_dropped_total = %v, want %d", n, over)
	}
}

// A QoS 1 message whose expiry passes while it waits to be sent is removed
// and counted once as undelivered; one already sent waits for its
// acknowledgement [MQTT-3.3.2-5]. Upstream mochi counted each expired
// message twice, and removed sent ones too.
func TestExpiredMessagesCounted(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	dev, tok := e.device()
	d := e.connectDevice(dev, tok)
	sub := newLateSubscriber(t, e, "lets-messages-expire", 1, topic(dev, "telemetry"))
	publish := func(payload string, expiry uint32) {
		t.Helper()
		pb := &paho.Publish{Topic: topic(dev, "telemetry"), QoS: 1, Payload: wrap(topic(dev, "telemetry"), payload)}
		if expiry > 0 {
			pb.Properties = &paho.PublishProperties{MessageExpiry: &expiry}
		}
		ctx, cancel := context.WithTimeout(t.Context(), wait)
		defer cancel()
		if pr, err := d.Publish(ctx, pb); err != nil || pr.ReasonCode != 0 {
			t.Fatalf("publish %s: %v %v", payload, pr, err)
		}
	}
	undelivered := func() float64 {
		return promtest.Sum(t, e.reg, "flock_mqtt_messages_dropped_total", "reason", "undelivered")
	}

	// Two rounds: the second ends after the broker's expiry pass of the
	// first has finished, so a second count of a message would show.
	for round := range 2 {
		sent, parked, next := fmt.Sprint("sent-", round), fmt.Sprint("parked-", round), fmt.Sprint("next-", round)
		publish(sent, 1)
		held := sub.expect(sent) // its window of one is now full
		publish(parked, 1)
		testutil.Eventually(t, fmt.Sprintf("round %d: the parked message to expire", round), func() error {
			if n := undelivered(); n < float64(round+1) {
				return fmt.Errorf("flock_mqtt_messages_dropped_total{reason=undelivered} = %v, want %d", n, round+1)
			}
			return nil
		})
		publish(next, 0)
		sub.ack(held)
		sub.ack(sub.expect(next))
	}
	if n := undelivered(); n != 2 {
		t.Errorf("flock_mqtt_messages_dropped_total{reason=undelivered} = %v, want 2", n)
	}
}

// A message held unacknowledged past mochi's MaximumMessageExpiryInterval
// is removed, counted, and gives back the send quota it held, so its
// subscriber goes on receiving (upstream kept the quota).
func TestEnforcedExpiryReturnsQuota(t *testing.T) {
	t.Parallel()
	e := startWith(t, nil, func(b *Broker) { b.server.Options.Capabilities.MaximumMessageExpiryInterval = 1 })
	dev, tok := e.device()
	d := e.connectDevice(dev, tok)
	sub := newLateSubscriber(t, e, "holds-too-long", 1, topic(dev, "telemetry"))

	if code := d.publish(t, topic(dev, "telemetry"), "held"); code != 0 {
		t.Fatalf("PUBACK %#x", code)
	}
	sub.expect("held") // and never acknowledged
	testutil.Eventually(t, "the message held past the maximum expiry to be removed", testutil.Until(func() bool {
		return promtest.Sum(t, e.reg, "flock_mqtt_messages_dropped_total", "reason", "undelivered") > 0
	}))
	if code := d.publish(t, topic(dev, "telemetry"), "next"); code != 0 {
		t.Fatalf("PUBACK %#x", code)
	}
	// Upstream kept the removed message's quota: nothing more arrived.
	sub.expect("next")
}

// The broker acknowledges only device payloads that match their channel's
// schema, while most tests here care about order and delivery, not content:
// wrap carries a test's short text in a valid payload of the topic's kind,
// and unwrap takes it back out. Payloads that already are valid, and the
// cloud-to-device kinds, which the broker does not check, pass unchanged.
func wrap(topic, text string) []byte {
	_, kind, ok := devicetopic.Parse(topic)
	if !ok || !devicetopic.IsFromDevice(kind) {
		return []byte(text)
	}
	if _, err := testValidator.Decode(kind, []byte(text)); err == nil {
		return []byte(text)
	}
	var v any
	switch kind {
	case "state":
		v = map[string]any{"seq": 0, "os_version": text}
	case "telemetry":
		v = map[string]any{"samples": []any{map[string]any{"ts": wrapTS, "name": "test", "value": 0, "unit": text}}}
	case "logs":
		v = map[string]any{"entries": []any{map[string]any{"service": "app", "seq": 0, "ts": wrapTS, "stream": "stdout", "line": text}}}
	case "events":
		v = map[string]any{"id": "00000000-0000-4000-8000-000000000000", "ts": wrapTS, "type": "failed", "error": text}
	case "status":
		v = map[string]any{"state": text, "connection_seq": 0}
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

const wrapTS = "2026-12-01T00:00:00Z"

var testValidator = func() *asyncapi.Validator {
	v, err := asyncapi.NewValidator()
	if err != nil {
		panic(err)
	}
	return v
}()

func unwrap(topic string, payload []byte) string {
	_, kind, ok := devicetopic.Parse(topic)
	var m map[string]any
	if !ok || !devicetopic.IsFromDevice(kind) || json.Unmarshal(payload, &m) != nil {
		return string(payload)
	}
	field := func(list, key string) (string, bool) {
		items, _ := m[list].([]any)
		if len(items) != 1 {
			return "", false
		}
		item, _ := items[0].(map[string]any)
		s, ok := item[key].(string)
		return s, ok
	}
	var text string
	switch kind {
	case "state":
		text, ok = m["os_version"].(string)
	case "telemetry":
		text, ok = field("samples", "unit")
	case "logs":
		text, ok = field("entries", "line")
	case "events":
		text, ok = m["error"].(string)
	case "status":
		text, ok = m["state"].(string)
	}
	if !ok {
		return string(payload)
	}
	return text
}
