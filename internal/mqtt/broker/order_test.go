package broker

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	pahopackets "github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/testutil/promtest"
)

// orderCheck follows, per publisher, the messages a subscriber receives.
// Messages are numbered from 0 in the order their publisher had them
// acknowledged. On one connection each publisher's messages must arrive
// consecutively; a new connection (a resumed session) may start again with
// a message the subscriber got but had not acknowledged, never after one it
// has not seen.
type orderCheck struct {
	next map[string]int // the lowest message not yet received
	prev map[string]int // the last message received on this connection
}

func newOrderCheck() *orderCheck {
	return &orderCheck{next: map[string]int{}, prev: map[string]int{}}
}

func (o *orderCheck) newConnection() { o.prev = map[string]int{} }

// receive records message n of publisher pub and reports whether it is new.
func (o *orderCheck) receive(pub string, n int) (bool, error) {
	if p, ok := o.prev[pub]; ok {
		if n != p+1 {
			return false, fmt.Errorf("publisher %s: got message %d after %d", pub, n, p)
		}
	} else if n > o.next[pub] {
		return false, fmt.Errorf("publisher %s: first message on this connection is %d, but %d never arrived", pub, n, o.next[pub])
	}
	o.prev[pub] = n
	if n < o.next[pub] {
		return false, nil
	}
	o.next[pub] = n + 1
	return true, nil
}

// publishQoS1 publishes at QoS 1 and waits for a successful PUBACK. Unlike
// client.publish it does not end the test, so publishing goroutines may
// call it.
func publishQoS1(ctx context.Context, c *paho.Client, topic, payload string) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	pr, err := c.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: wrap(topic, payload)})
	if err != nil {
		return err
	}
	if pr.ReasonCode != 0 {
		return fmt.Errorf("PUBACK %#x", pr.ReasonCode)
	}
	return nil
}

// lateSubscriber is a QoS 1 subscriber on a persistent session that
// acknowledges each message when it chooses, as the ingester does after
// storing a batch. It speaks MQTT on its own connection rather than through
// paho's client: paho.golang v0.23.0 clears its list of messages awaiting a
// manual acknowledgement after it has started reading, so messages resent
// right after CONNACK on a resumed session could not be acknowledged.
// Only the test's goroutine calls its methods.
type lateSubscriber struct {
	t        *testing.T
	addr     string
	clientID string
	recvMax  uint16
	conn     net.Conn
	// got receives this connection's messages; it is closed when the
	// connection ends.
	got    chan *pahopackets.Publish
	subAck chan *pahopackets.Suback
}

// newLateSubscriber connects a new session with Receive Maximum recvMax
// and subscribes to filter at QoS 1.
func newLateSubscriber(t *testing.T, e *env, clientID string, recvMax uint16, filter string) *lateSubscriber {
	t.Helper()
	s := &lateSubscriber{t: t, addr: e.broker.Addr(), clientID: clientID, recvMax: recvMax}
	s.connect(true)
	t.Cleanup(func() { s.close() })
	sub := &pahopackets.Subscribe{PacketID: 1, Subscriptions: []pahopackets.SubOptions{{Topic: filter, QoS: 1}}}
	s.write(sub)
	select {
	case sa := <-s.subAck:
		if len(sa.Reasons) != 1 || sa.Reasons[0] != 1 {
			t.Fatalf("SUBACK %v, want granted QoS 1", sa.Reasons)
		}
	case <-time.After(wait):
		t.Fatal("no SUBACK")
	}
	return s
}

// resume ends the connection without acknowledging what it received and
// connects again to the same session; it fails the test unless the broker
// kept the session.
func (s *lateSubscriber) resume() {
	s.t.Helper()
	s.close()
	if !s.connect(false) {
		s.t.Fatal("session not resumed")
	}
}

func (s *lateSubscriber) connect(cleanStart bool) (sessionPresent bool) {
	s.t.Helper()
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		s.t.Fatal(err)
	}
	expiry := uint32(60)
	s.conn = conn
	s.write(&pahopackets.Connect{
		ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: s.clientID, CleanStart: cleanStart, KeepAlive: 60,
		UsernameFlag: true, Username: serviceUser, PasswordFlag: true, Password: []byte(servicePassword),
		Properties: &pahopackets.Properties{ReceiveMaximum: &s.recvMax, SessionExpiryInterval: &expiry},
	})
	// CONNACK is read here, before the reader starts, so that whatever the
	// broker sends right after it goes to the reader.
	_ = conn.SetReadDeadline(time.Now().Add(wait))
	cp, err := pahopackets.ReadPacket(conn)
	if err != nil {
		s.t.Fatalf("read CONNACK: %v", err)
	}
	ca, ok := cp.Content.(*pahopackets.Connack)
	if !ok || ca.ReasonCode != 0 {
		s.t.Fatalf("got %v, want a successful CONNACK", cp)
	}
	_ = conn.SetReadDeadline(time.Time{})
	got, subAck := make(chan *pahopackets.Publish, 1<<16), make(chan *pahopackets.Suback, 1)
	s.got, s.subAck = got, subAck
	go func() {
		defer close(got)
		for {
			cp, err := pahopackets.ReadPacket(conn)
			if err != nil {
				return
			}
			switch p := cp.Content.(type) {
			case *pahopackets.Publish:
				got <- p
			case *pahopackets.Suback:
				subAck <- p
			}
		}
	}()
	return ca.SessionPresent
}

// expect returns the next message, which must carry payload want.
func (s *lateSubscriber) expect(want string) *pahopackets.Publish {
	s.t.Helper()
	select {
	case p, ok := <-s.got:
		if !ok {
			s.t.Fatalf("connection closed while waiting for %q", want)
		}
		if got := unwrap(p.Topic, p.Payload); got != want {
			s.t.Fatalf("received %q, want %q", got, want)
		}
		return p
	case <-time.After(wait):
		s.t.Fatalf("%q did not arrive", want)
		return nil
	}
}

// ack acknowledges p, which must have arrived on this connection.
func (s *lateSubscriber) ack(p *pahopackets.Publish) {
	s.t.Helper()
	s.write(&pahopackets.Puback{PacketID: p.PacketID})
}

func (s *lateSubscriber) write(p io.WriterTo) {
	s.t.Helper()
	if _, err := p.WriteTo(s.conn); err != nil {
		s.t.Fatalf("write %T: %v", p, err)
	}
}

// close sends DISCONNECT (normal: the session stays) and closes the
// connection.
func (s *lateSubscriber) close() {
	_, _ = (&pahopackets.Disconnect{}).WriteTo(s.conn)
	_ = s.conn.Close()
}

// Packets to a client are written by a goroutine that runs only while its
// queue holds any (third_party/mochi-mqtt/outbound.go). Concurrent
// publishers, each waiting for its PUBACK, start and stop that writer over
// and over, and the subscriber's Receive Maximum (64) parks messages now
// and then; every message must still arrive once, in each publisher's
// order. TestQoS1KeepsPublisherOrder presses harder.
func TestOutboundQueueKeepsOrder(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *Config) { c.MessagesPerSecond = 100000; c.Burst = 100000 })
	sub := e.connectService("order-subscriber")
	if code := sub.subscribe(t, "flock/v1/devices/+/telemetry"); code != 1 {
		t.Fatalf("SUBACK %#x", code)
	}
	const devices, each = 4, 300
	ids := make([]uuid.UUID, devices)
	var wg sync.WaitGroup
	for i := range ids {
		id, tok := e.device()
		ids[i] = id
		d := e.connectDevice(id, tok)
		wg.Go(func() {
			for n := range each {
				if err := publishQoS1(t.Context(), d.Client, topic(id, "telemetry"), fmt.Sprint(n)); err != nil {
					t.Errorf("device %s: publish %d: %v", id, n, err)
					return
				}
			}
		})
	}
	defer wg.Wait()
	next := map[string]int{}
	for range devices * each {
		p := sub.next(t)
		dev, _, _ := devicetopic.Parse(p.Topic)
		if want := fmt.Sprint(next[dev.String()]); string(p.Payload) != want {
			t.Fatalf("device %s: got message %s, want %s", dev, p.Payload, want)
		}
		next[dev.String()]++
	}
	for _, id := range ids {
		if next[id.String()] != each {
			t.Errorf("device %s: %d messages, want %d", id, next[id.String()], each)
		}
	}
}

// TestQoS1KeepsPublisherOrder is a stress test of the contract: a QoS 1
// message acknowledged to a publisher reaches each subscriber in that
// publisher's order, or is counted as dropped. Publishers run side by side
// while a subscriber with a small Receive Maximum keeps the broker parking
// messages and sending them as acknowledgements return; that is where
// messages used to overtake each other (third_party/mochi-mqtt/FLOCK.md,
// "one order").
func TestQoS1KeepsPublisherOrder(t *testing.T) {
	t.Parallel()
	const publishers, each = 8, 250
	tests := []struct {
		name    string
		recvMax uint16
		// The subscriber acknowledges this many messages at a time, late.
		ackBatch int
		// The subscriber disconnects and resumes its session this many
		// times, without acknowledging what it holds.
		resumes int
	}{
		{"acknowledges each message", 4, 1, 0},
		{"acknowledges in batches", 16, 16, 0},
		{"acknowledges in batches of 512 like the ingester", 512, 512, 0},
		{"resumes its session", 8, 8, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := start(t, func(c *Config) { c.MessagesPerSecond = 1e6; c.Burst = 1e6 })
			sub := newLateSubscriber(t, e, "order-"+uuid.NewString(), tt.recvMax, "flock/v1/devices/+/telemetry")

			errs := make(chan error, publishers)
			var wg sync.WaitGroup
			for range publishers {
				id, tok := e.device()
				d := e.connectDevice(id, tok)
				wg.Go(func() {
					for n := range each {
						if err := publishQoS1(t.Context(), d.Client, topic(id, "telemetry"), strconv.Itoa(n)); err != nil {
							errs <- fmt.Errorf("device %s: publish %d: %w", id, n, err)
							return
						}
					}
				})
			}
			defer wg.Wait()

			check := newOrderCheck()
			var held []*pahopackets.Publish
			const total = publishers * each
			for received := 0; received < total; {
				var p *pahopackets.Publish
				select {
				case p = <-sub.got:
					if p == nil {
						t.Fatal("the broker closed the subscriber's connection")
					}
				case err := <-errs:
					t.Fatal(err)
				case <-time.After(wait):
					t.Fatalf("%d of %d messages arrived, then none for %v", received, total, wait)
				}
				dev, _, ok := devicetopic.Parse(p.Topic)
				if !ok {
					t.Fatalf("message on %s", p.Topic)
				}
				n, err := strconv.Atoi(unwrap(p.Topic, p.Payload))
				if err != nil {
					t.Fatalf("payload %q: %v", p.Payload, err)
				}
				isNew, err := check.receive(dev.String(), n)
				if err != nil {
					t.Fatal(err)
				}
				if isNew {
					received++
				}
				if held = append(held, p); len(held) == tt.ackBatch {
					for _, h := range held {
						sub.ack(h)
					}
					held = held[:0]
				}
				if tt.resumes > 0 && isNew && received < total && received%(total/(tt.resumes+1)) == 0 {
					sub.resume()
					check.newConnection()
					held = held[:0]
				}
			}
			if n := promtest.Sum(t, e.reg, "flock_mqtt_messages_dropped_total"); n != 0 {
				t.Errorf("flock_mqtt_messages_dropped_total = %v, want 0", n)
			}
		})
	}
}

// A device numbers its own publishes independently of the broker's
// messages to it (MQTT 5 2.2.1). Its QoS 1 state publishes under the
// identifiers of nudges it has not yet acknowledged must not cost it those
// nudges' send quota: upstream removed the nudges from the inflight store,
// so their PUBACKs returned nothing and, once its Receive Maximum had
// leaked away, the device received nothing more.
func TestDevicePacketIDsLeaveDeliveriesAlone(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *Config) { c.MessagesPerSecond = 1000; c.Burst = 1000 })
	dev, tok := e.device()
	const window = 8

	conn, err := net.Dial("tcp", e.broker.Addr())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *paho.Publish, 4*window)
	d := paho.NewClient(paho.ClientConfig{
		Conn:                       conn,
		EnableManualAcknowledgment: true,
		SendAcksInterval:           time.Millisecond,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			got <- pr.Packet
			return true, nil
		}},
	})
	cp := deviceConnect(dev, tok)
	recvMax := uint16(window)
	cp.KeepAlive, cp.CleanStart, cp.Properties = 30, true, &paho.ConnectProperties{ReceiveMaximum: &recvMax}
	if ca, err := d.Connect(t.Context(), cp); err != nil || ca.ReasonCode != 0 {
		t.Fatalf("connect device: %v %v", ca, err)
	}
	t.Cleanup(func() { _ = d.Disconnect(&paho.Disconnect{}) })
	if _, err := d.Subscribe(t.Context(), &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic(dev, "target"), QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	svc := e.connectService("nudger")

	nudge := func(round int) []*paho.Publish {
		t.Helper()
		for i := range window {
			if code := svc.publish(t, topic(dev, "target"), fmt.Sprint(round, "-", i)); code != 0 {
				t.Fatalf("nudge %d-%d: PUBACK %#x", round, i, code)
			}
		}
		// A full window arrives without any acknowledgement.
		var held []*paho.Publish
		for i := range window {
			select {
			case p := <-got:
				if want := fmt.Sprint(round, "-", i); string(p.Payload) != want {
					t.Fatalf("device received %q, want %q", p.Payload, want)
				}
				held = append(held, p)
			case <-time.After(wait):
				t.Fatalf("round %d: device received %d of %d nudges within its Receive Maximum", round, i, window)
			}
		}
		return held
	}

	held := nudge(0)
	// The broker numbered the nudges from 1; the device numbers its
	// publishes from 1 too, so these reuse the nudges' identifiers.
	for i := range window {
		ctx, cancel := context.WithTimeout(t.Context(), wait)
		pr, err := d.Publish(ctx, &paho.Publish{Topic: topic(dev, "state"), QoS: 1, Payload: fmt.Appendf(nil, `{"seq":%d}`, i)})
		cancel()
		if err != nil || pr.ReasonCode != 0 {
			t.Fatalf("device publish %d: %v %v", i, pr, err)
		}
	}
	for _, p := range held {
		if err := d.Ack(p); err != nil {
			t.Fatal(err)
		}
	}
	nudge(1)
}
