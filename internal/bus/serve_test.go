package bus_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flock-io/flock-api/internal/bus"
)

// serveEmbedded runs ServeEmbedded on addr until the test ends and returns
// the address it serves. The goroutine running it is stopped and waited for
// in cleanup, and its result checked there.
func serveEmbedded(t *testing.T, addr string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	listening := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- bus.ServeEmbedded(ctx, addr, quietLog(), func(a string) { listening <- a }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeEmbedded after its context ended: %v", err)
		}
	})
	select {
	case a := <-listening:
		return a
	case err := <-done:
		t.Fatalf("ServeEmbedded(%s) returned before listening: %v", addr, err)
	case <-time.After(testTimeout):
		t.Fatalf("ServeEmbedded(%s) did not listen within %s", addr, testTimeout)
	}
	return ""
}

// TestServeEmbeddedSharesOneCluster: two buses opened against the served
// address, as two processes would be, see each other's records, and the
// served cluster already has every topic.
func TestServeEmbeddedSharesOneCluster(t *testing.T) {
	addr := serveEmbedded(t, "127.0.0.1:0")
	if h, p, err := net.SplitHostPort(addr); err != nil || h != "127.0.0.1" || p == "0" {
		t.Fatalf("served address = %q, want 127.0.0.1 and the port chosen", addr)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	topics, err := kadm.NewClient(cl).ListTopics(ctx)
	if err != nil {
		t.Fatalf("list topics: %v", err)
	}
	for _, tp := range bus.AllTopics {
		if !topics.Has(tp) {
			t.Errorf("topic %s is not seeded; topics: %v", tp, topics.Names())
		}
	}

	open := func() *bus.Bus {
		b, err := bus.Open(ctx, bus.Config{Brokers: []string{addr}, Log: quietLog()})
		if err != nil {
			t.Fatalf("open bus on %s: %v", addr, err)
		}
		t.Cleanup(b.Close)
		if b.Embedded() {
			t.Fatal("a bus given brokers started its own cluster")
		}
		return b
	}
	producer, consumer := open(), open()
	rec := bus.Record{Topic: bus.TopicDeviceCommands, Key: []byte("device-1"), Value: []byte(`{"kind":"target","version":"v1"}`)}
	if err := producer.Publish(ctx, rec); err != nil {
		t.Fatalf("publish: %v", err)
	}
	got, err := consumeUntil(t, consumer, "serve-embedded", []string{bus.TopicDeviceCommands}, hasValue(string(rec.Value)))
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	if len(got) != 1 || string(got[0].Key) != "device-1" {
		t.Fatalf("consumed %d records (%v), want the one published through the other bus", len(got), got)
	}
}

// TestServeEmbeddedStops: when its context ends the port is closed.
func TestServeEmbeddedStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	listening := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- bus.ServeEmbedded(ctx, "127.0.0.1:0", quietLog(), func(a string) { listening <- a }) }()
	var addr string
	select {
	case addr = <-listening:
	case err := <-done:
		t.Fatalf("ServeEmbedded returned before listening: %v", err)
	case <-time.After(testTimeout):
		t.Fatalf("ServeEmbedded did not listen within %s", testTimeout)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("ServeEmbedded after cancel: %v", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after ServeEmbedded returned", addr)
	}
}

func TestServeEmbeddedRefusesAddresses(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	tests := []struct{ addr, want string }{
		{"9092", "want host:port"},
		{":0", "name the host clients dial"},
		{"0.0.0.0:0", "name the host clients dial"},
		{"[::]:0", "name the host clients dial"},
		{taken.Addr().String(), "address already in use"},
	}
	for _, tt := range tests {
		called := false
		err := bus.ServeEmbedded(t.Context(), tt.addr, quietLog(), func(string) { called = true })
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ServeEmbedded(%q) = %v, want an error containing %q", tt.addr, err, tt.want)
		}
		if called {
			t.Errorf("ServeEmbedded(%q) called listening", tt.addr)
		}
	}
}
