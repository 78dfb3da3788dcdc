package broker

import (
	"context"
	"fmt"
	"net"
	"testing"

	"github.com/eclipse/paho.golang/paho"

	"github.com/flock-io/flock-api/internal/testutil"
)

// A subscriber with manual acknowledgements (the ingester's paho setup)
// that resumes its session can acknowledge everything the broker resends
// right after CONNACK: the broker's store of its unacknowledged messages
// empties. paho.golang v0.23.0 forgot the messages it read between
// starting its reader and resetting its acknowledgement list, so their
// PUBACKs were never sent and each took a unit of the session's Receive
// Maximum until the next reconnect (see third_party/paho.golang/FLOCK.md).
func TestResumedManualAckSessionAcknowledgesEverything(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *Config) { c.MessagesPerSecond, c.Burst = 100000, 100000 })
	dev, tok := e.device()
	d := e.connectDevice(dev, tok)
	const clientID, perRound, rounds = "resuming-acker", 40, 10
	expiry := uint32(300)

	connect := func() (*paho.Client, chan *paho.Publish) {
		t.Helper()
		conn, err := net.Dial("tcp", e.broker.Addr())
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan *paho.Publish, 1024)
		c := paho.NewClient(paho.ClientConfig{Conn: conn, EnableManualAcknowledgment: true,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				got <- pr.Packet
				return true, nil
			}}})
		rm := uint16(512)
		ca, err := c.Connect(t.Context(), &paho.Connect{ClientID: clientID, CleanStart: false, KeepAlive: 30,
			UsernameFlag: true, Username: serviceUser, PasswordFlag: true, Password: []byte(servicePassword),
			Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry, ReceiveMaximum: &rm}})
		if err != nil || ca.ReasonCode != 0 {
			t.Fatalf("connect: %v %v", ca, err)
		}
		return c, got
	}
	c, _ := connect()
	if _, err := c.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic(dev, "telemetry"), QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	_ = c.Disconnect(&paho.Disconnect{})
	<-c.Done()

	inflight := func() int {
		cl, ok := e.broker.server.Clients.Get(clientID)
		if !ok {
			return -1
		}
		return cl.State.Inflight.Len()
	}
	for round := range rounds {
		// Published while the subscriber is away: the broker resends them
		// right after the next CONNACK.
		for i := range perRound {
			if code := d.publish(t, topic(dev, "telemetry"), fmt.Sprint(round, "-", i)); code != 0 {
				t.Fatalf("publish: PUBACK %#x", code)
			}
		}
		c, got := connect()
		for range perRound {
			select {
			case p := <-got:
				if err := c.Ack(p); err != nil {
					t.Fatalf("round %d: ack a resent message: %v", round, err)
				}
			case <-c.Done():
				t.Fatalf("round %d: connection ended", round)
			}
		}
		testutil.Eventually(t, fmt.Sprintf("round %d: every resent message acknowledged", round), func() error {
			if n := inflight(); n != 0 {
				return fmt.Errorf("%d messages unacknowledged in the broker", n)
			}
			return nil
		})
		ctx, cancel := context.WithCancel(t.Context())
		_ = c.Disconnect(&paho.Disconnect{})
		select {
		case <-c.Done():
		case <-ctx.Done():
		}
		cancel()
	}
}
