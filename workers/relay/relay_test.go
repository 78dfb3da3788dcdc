package relay_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"testing"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/mqtt/broker"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
	"github.com/flock-io/flock-api/internal/testutil/promtest"
	"github.com/flock-io/flock-api/workers/relay"
)

const serviceUser, servicePassword = "flock-ingester", "relay-test-password"

// A target record reaches the device's target topic and a command record
// its commands topic; a record no device could use is dropped and counted,
// and the relay goes on.
func TestRelay(t *testing.T) {
	quiet := slog.New(slog.DiscardHandler)
	pool := pgtest.Pool(t)
	tokens, err := devicetoken.New(t.Context(), pool, devicetoken.Config{Issuer: "http://flock.test", Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	br, err := broker.New(broker.Config{Listen: "127.0.0.1:0", ServiceUsername: serviceUser, ServicePassword: servicePassword,
		Devices: pool, Log: quiet}, tokens)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bus.Open(t.Context(), bus.Config{Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	reg := prometheus.NewRegistry()
	r, err := relay.New(relay.Config{Broker: &url.URL{Scheme: "mqtt", Host: br.Addr()}, Username: serviceUser, Password: servicePassword,
		ClientID: "relay-test", Log: quiet, Metrics: reg}, b)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- br.Run(ctx) }()
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("stopped with %v", err)
			}
		}
	})

	// A device of the platform, subscribed to what it receives.
	org, fleet, dev := uuid.New(), uuid.New(), uuid.New()
	if _, err := pool.Exec(t.Context(), `WITH o AS (INSERT INTO orgs (id, name) VALUES ($1::uuid, 'acme')),
		f AS (INSERT INTO fleets (id, org_id, name, architecture) VALUES ($2::uuid, $1::uuid, 'f', 'amd64'))
		INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key)
		VALUES ($3, $1::uuid, $2::uuid, 'd', 'generic', 'amd64', '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)`,
		org, fleet, dev); err != nil {
		t.Fatal(err)
	}
	tok, _, err := tokens.Issue(t.Context(), dev, org, fleet)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", br.Addr())
	if err != nil {
		t.Fatal(err)
	}
	inbox := make(chan *paho.Publish, 8)
	c := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) { inbox <- pr.Packet; return true, nil }}})
	if ca, err := c.Connect(t.Context(), &paho.Connect{ClientID: dev.String(), CleanStart: true, KeepAlive: 30,
		Username: dev.String(), UsernameFlag: true, Password: []byte(tok), PasswordFlag: true}); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("device connect: %v %v", ca, err)
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{}) })
	if _, err := c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: devicetopic.Topic(dev, devicetopic.Target), QoS: 1}, {Topic: devicetopic.Topic(dev, devicetopic.Commands), QoS: 1}}}); err != nil {
		t.Fatal(err)
	}

	cmd := uuid.New()
	recs := []string{
		`{"device_id":"not-a-uuid","kind":"target","target":{"version":"v-0"}}`,
		fmt.Sprintf(`{"device_id":%q,"kind":"command"}`, dev),
		`not json`,
		fmt.Sprintf(`{"device_id":%q,"kind":"target","target":{"version":"v-42"}}`, dev),
		fmt.Sprintf(`{"device_id":%q,"kind":"command","command":{"id":%q,"type":"reboot"}}`, dev, cmd),
	}
	for _, v := range recs {
		if err := b.Publish(t.Context(), bus.Record{Topic: bus.TopicDeviceCommands, Key: []byte(dev.String()), Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
	// A batch is published concurrently: the two may arrive either way.
	want := map[string]string{
		devicetopic.Topic(dev, devicetopic.Target):   `{"version":"v-42"}`,
		devicetopic.Topic(dev, devicetopic.Commands): fmt.Sprintf(`{"id":%q,"type":"reboot"}`, cmd),
	}
	got := map[string]string{}
	testutil.Eventually(t, "both messages at the device", testutil.Until(func() bool {
		select {
		case p := <-inbox:
			got[p.Topic] = string(p.Payload)
		default:
		}
		return len(got) == len(want)
	}))
	for topic, payload := range want {
		if got[topic] != payload {
			t.Fatalf("device received %v, want %v", got, want)
		}
	}
	if got := promtest.Sum(t, reg, "flock_ingest_relay_dropped_total"); got != 3 {
		t.Errorf("dropped = %v, want 3", got)
	}
	if got := promtest.Sum(t, reg, "flock_ingest_relayed_total"); got != 2 {
		t.Errorf("relayed = %v, want 2", got)
	}
}
