package bus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/testutil"
)

// testTimeout bounds every wait so a broken bus fails the test instead of
// hanging it; nothing asserts how fast anything is.
const testTimeout = 60 * time.Second

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openEmbedded(t testing.TB) *bus.Bus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	b, err := bus.Open(ctx, bus.Config{Log: quietLog()})
	if err != nil {
		t.Fatalf("open embedded bus: %v", err)
	}
	t.Cleanup(b.Close)
	if !b.Embedded() {
		t.Fatal("Embedded() = false with no brokers configured")
	}
	return b
}

// adminFor talks to the bus's cluster with a separate client, as an operator
// would, so assertions do not go through the code under test.
func adminFor(t testing.TB, b *bus.Bus) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Brokers()...))
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

// consumeUntil runs one Consume call until done reports true for everything
// received so far (then cancels it), and returns what it received and what
// Consume returned.
func consumeUntil(t *testing.T, b *bus.Bus, group string, topics []string, done func([]bus.Record) bool) ([]bus.Record, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	var got []bus.Record
	err := b.Consume(ctx, group, topics, func(_ context.Context, recs []bus.Record) error {
		got = append(got, recs...)
		if done(got) {
			cancel()
		}
		return nil
	})
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("consume %s: gave up after %v with %d records", group, testTimeout, len(got))
	}
	return got, err
}

func hasValue(v string) func([]bus.Record) bool {
	return func(recs []bus.Record) bool {
		for _, r := range recs {
			if string(r.Value) == v {
				return true
			}
		}
		return false
	}
}

func atLeast(n int) func([]bus.Record) bool {
	return func(recs []bus.Record) bool { return len(recs) >= n }
}

func TestRoundTrip(t *testing.T) {
	b := openEmbedded(t)
	tests := []struct {
		name string
		rec  bus.Record
	}{
		{"state with headers", bus.Record{
			Topic:   bus.TopicDeviceState,
			Key:     []byte("8f14e45f-ceea-467f-a0f4-b8f4c1a9c001"),
			Value:   []byte(`{"status":"idle"}`),
			Headers: map[string]string{"content-type": "application/json", "schema": "device-state/1"},
		}},
		{"connectivity without headers", bus.Record{
			Topic: bus.TopicDeviceConnectivity,
			Key:   []byte("8f14e45f-ceea-467f-a0f4-b8f4c1a9c002"),
			Value: []byte(`{"online":true,"seq":7}`),
		}},
		{"events with empty header value", bus.Record{
			Topic:   bus.TopicDeviceEvents,
			Key:     []byte("8f14e45f-ceea-467f-a0f4-b8f4c1a9c003"),
			Value:   []byte(`{"id":"e1"}`),
			Headers: map[string]string{"trace": ""},
		}},
		{"commands", bus.Record{
			Topic: bus.TopicDeviceCommands,
			Key:   []byte("8f14e45f-ceea-467f-a0f4-b8f4c1a9c004"),
			Value: []byte(`{"command":"reboot"}`),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			if err := b.Publish(ctx, tt.rec); err != nil {
				t.Fatalf("publish: %v", err)
			}
			got, err := consumeUntil(t, b, "roundtrip-"+tt.rec.Topic, []string{tt.rec.Topic}, atLeast(1))
			if err != nil {
				t.Fatalf("consume: %v", err)
			}
			if len(got) != 1 {
				t.Fatalf("got %d records, want 1", len(got))
			}
			r := got[0]
			if r.Topic != tt.rec.Topic || !bytes.Equal(r.Key, tt.rec.Key) || !bytes.Equal(r.Value, tt.rec.Value) {
				t.Errorf("got %s/%s/%s, want %s/%s/%s", r.Topic, r.Key, r.Value, tt.rec.Topic, tt.rec.Key, tt.rec.Value)
			}
			if !maps.Equal(r.Headers, tt.rec.Headers) {
				t.Errorf("headers = %v, want %v", r.Headers, tt.rec.Headers)
			}
		})
	}
}

func TestPerKeyOrder(t *testing.T) {
	b := openEmbedded(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()

	const keys, perKey = 5, 20
	var recs []bus.Record
	for i := range keys * perKey {
		key, seq := i%keys, i/keys
		recs = append(recs, bus.Record{
			Topic:   bus.TopicDeviceState,
			Key:     fmt.Appendf(nil, "device-%d", key),
			Value:   fmt.Appendf(nil, `{"seq":%d}`, seq),
			Headers: map[string]string{"seq": strconv.Itoa(seq)},
		})
	}
	// Several Publish calls, as the ingester makes them, not one batch.
	for i := 0; i < len(recs); i += 10 {
		if err := b.Publish(ctx, recs[i:i+10]...); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}

	// The order claim is only worth something if the keys really landed on
	// different partitions.
	ends, err := adminFor(t, b).ListEndOffsets(ctx, bus.TopicDeviceState)
	if err != nil {
		t.Fatalf("list end offsets: %v", err)
	}
	used := 0
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			used++
		}
	})
	if used < 2 {
		t.Fatalf("%d keys landed on %d partition(s); want them spread", keys, used)
	}

	got, err := consumeUntil(t, b, "order", []string{bus.TopicDeviceState}, atLeast(len(recs)))
	if err != nil {
		t.Fatalf("consume: %v", err)
	}
	if len(got) != len(recs) {
		t.Fatalf("got %d records, want %d", len(got), len(recs))
	}
	next := map[string]int{}
	for _, r := range got {
		want := next[string(r.Key)]
		if h := r.Headers["seq"]; h != strconv.Itoa(want) || string(r.Value) != fmt.Sprintf(`{"seq":%d}`, want) {
			t.Fatalf("key %s: got seq header %q value %s, want seq %d", r.Key, h, r.Value, want)
		}
		next[string(r.Key)] = want + 1
	}
	for k, n := range next {
		if n != perKey {
			t.Errorf("key %s: got %d records, want %d", k, n, perKey)
		}
	}
}

func TestAtLeastOnce(t *testing.T) {
	b := openEmbedded(t)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	const group, n = "scheduler", 30
	topics := []string{bus.TopicDeviceEvents}

	want := map[string]bool{}
	var recs []bus.Record
	for i := range n {
		v := fmt.Sprintf("event-%02d", i)
		want[v] = true
		recs = append(recs, bus.Record{Topic: bus.TopicDeviceEvents, Key: fmt.Appendf(nil, "device-%d", i%7), Value: []byte(v)})
	}
	if err := b.Publish(ctx, recs...); err != nil {
		t.Fatalf("publish: %v", err)
	}

	// 1. The handler fails on its first batch: Consume stops with that error.
	errBoom := errors.New("database down")
	var failed []bus.Record
	err := b.Consume(ctx, group, topics, func(_ context.Context, recs []bus.Record) error {
		failed = append(failed, recs...)
		return errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("Consume returned %v, want the handler's error", err)
	}
	if len(failed) == 0 {
		t.Fatal("handler never ran")
	}

	// 2. Nothing was committed: the same group gets the failed batch again,
	// and everything else.
	got, err := consumeUntil(t, b, group, topics, func(got []bus.Record) bool { return len(values(got)) == n })
	if err != nil {
		t.Fatalf("second Consume: %v", err)
	}
	redelivered := values(got)
	for _, r := range failed {
		if !redelivered[string(r.Value)] {
			t.Errorf("record %s from the failed batch was not redelivered", r.Value)
		}
	}
	if !maps.Equal(redelivered, want) {
		t.Errorf("second Consume got %d distinct records, want %d", len(redelivered), n)
	}

	// 3. The second run committed: a third sees only what comes after.
	if err := b.Publish(ctx, bus.Record{Topic: bus.TopicDeviceEvents, Key: []byte("device-0"), Value: []byte("marker")}); err != nil {
		t.Fatalf("publish marker: %v", err)
	}
	got, err = consumeUntil(t, b, group, topics, hasValue("marker"))
	if err != nil {
		t.Fatalf("third Consume: %v", err)
	}
	if len(got) != 1 {
		t.Errorf("third Consume got %d records (%v), want only the marker", len(got), values(got))
	}
}

func values(recs []bus.Record) map[string]bool {
	m := make(map[string]bool, len(recs))
	for _, r := range recs {
		m[string(r.Value)] = true
	}
	return m
}

func TestGroupMembersSplitPartitions(t *testing.T) {
	b := openEmbedded(t)
	adm := adminFor(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	const group, n = "split", 200
	topics := []string{bus.TopicDeviceEvents}

	var mu sync.Mutex
	handled := [2]map[string]int{{}, {}}
	total := 0
	consumeCtx, stopConsumers := context.WithCancel(ctx)
	defer stopConsumers()
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for m := range 2 {
		wg.Go(func() {
			errs[m] = b.Consume(consumeCtx, group, topics, func(_ context.Context, recs []bus.Record) error {
				mu.Lock()
				defer mu.Unlock()
				for _, r := range recs {
					handled[m][string(r.Value)]++
					total++
				}
				return nil
			})
		})
	}
	// Whoever stops first, both members end before the checks below.
	defer func() { stopConsumers(); wg.Wait() }()

	// kfake lets a member that joins first drain everything before the second
	// joins, so publish only once both hold partitions.
	testutil.Eventually(t, "both members assigned", func() error {
		described, err := adm.DescribeGroups(ctx, group)
		if err != nil {
			return err
		}
		g := described[group]
		if g.Err != nil {
			return g.Err
		}
		assigned := 0
		for _, m := range g.Members {
			a, ok := m.Assigned.AsConsumer()
			if !ok || len(a.Topics) == 0 {
				return fmt.Errorf("member %s has no assignment", m.MemberID)
			}
			for _, tp := range a.Topics {
				assigned += len(tp.Partitions)
			}
		}
		if g.State != "Stable" || len(g.Members) != 2 || assigned != 6 {
			return fmt.Errorf("state %s, %d members, %d partitions assigned", g.State, len(g.Members), assigned)
		}
		return nil
	})

	want := map[string]bool{}
	var recs []bus.Record
	for i := range n {
		v := fmt.Sprintf("event-%03d", i)
		want[v] = true
		recs = append(recs, bus.Record{Topic: bus.TopicDeviceEvents, Key: fmt.Appendf(nil, "device-%d", i%50), Value: []byte(v)})
	}
	if err := b.Publish(ctx, recs...); err != nil {
		t.Fatalf("publish: %v", err)
	}
	testutil.Eventually(t, "all records handled", func() error {
		mu.Lock()
		defer mu.Unlock()
		if total < n {
			return fmt.Errorf("%d of %d handled", total, n)
		}
		return nil
	})
	stopConsumers()
	wg.Wait()

	for m, err := range errs {
		if err != nil {
			t.Errorf("member %d: Consume returned %v", m, err)
		}
	}
	seen := map[string]bool{}
	for m, h := range handled {
		if len(h) == 0 {
			t.Errorf("member %d handled nothing; the group did not split", m)
		}
		for v, count := range h {
			if count > 1 || seen[v] {
				t.Errorf("record %s handled more than once", v)
			}
			seen[v] = true
		}
	}
	if !maps.Equal(seen, want) {
		t.Errorf("handled %d distinct records, want %d", len(seen), n)
	}
	t.Logf("member 0 handled %d, member 1 handled %d", len(handled[0]), len(handled[1]))
}

func TestOpenUnreachable(t *testing.T) {
	// A port that was just free: nothing listens there.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, bus.Config{Brokers: []string{addr}, Log: quietLog()})
	if err == nil {
		b.Close()
		t.Fatal("Open succeeded against a port where nothing listens")
	}
	if !strings.Contains(err.Error(), "FLOCK_KAFKA_BROKERS") || !strings.Contains(err.Error(), addr) {
		t.Errorf("error %q should name FLOCK_KAFKA_BROKERS and %s", err, addr)
	}
}

func TestCloseStopsEmbeddedCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	b, err := bus.Open(ctx, bus.Config{Log: quietLog()})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	addrs := b.Brokers()
	if err := b.Ping(ctx); err != nil {
		t.Fatalf("ping before close: %v", err)
	}

	// A consumer still running at Close is stopped, not orphaned.
	consumed := make(chan error, 1)
	go func() {
		consumed <- b.Consume(ctx, "closing", []string{bus.TopicDeviceState}, func(context.Context, []bus.Record) error { return nil })
	}()
	b.Close()
	select {
	case err := <-consumed:
		if !errors.Is(err, bus.ErrClosed) {
			t.Errorf("Consume after Close returned %v, want ErrClosed", err)
		}
	case <-ctx.Done():
		t.Fatal("Consume kept running after Close")
	}
	b.Close() // twice is fine

	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	defer cl.Close()
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	defer pcancel()
	err = cl.ProduceSync(pctx, &kgo.Record{Topic: bus.TopicDeviceState, Value: []byte("x")}).FirstErr()
	if err == nil {
		t.Fatalf("produced to %v after Close", addrs)
	}
}

func TestPublishCancelledContext(t *testing.T) {
	b := openEmbedded(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := b.Publish(ctx, bus.Record{Topic: bus.TopicDeviceState, Key: []byte("k"), Value: []byte("v")})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish on a cancelled context returned %v, want context.Canceled", err)
	}
}

func TestConsumeArguments(t *testing.T) {
	b := openEmbedded(t)
	handler := func(context.Context, []bus.Record) error { return nil }
	tests := []struct {
		name    string
		group   string
		topics  []string
		handler func(context.Context, []bus.Record) error
	}{
		{"no group", "", []string{bus.TopicDeviceState}, handler},
		{"no topics", "g", nil, handler},
		{"no handler", "g", []string{bus.TopicDeviceState}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := b.Consume(context.Background(), tt.group, tt.topics, tt.handler); err == nil {
				t.Fatal("Consume accepted invalid arguments")
			}
		})
	}
}

func BenchmarkPublish(b *testing.B) {
	bs := openEmbedded(b)
	value := bytes.Repeat([]byte("x"), 200)
	rec := func(i int) bus.Record {
		return bus.Record{Topic: bus.TopicDeviceState, Key: fmt.Appendf(nil, "device-%d", i%1000), Value: value}
	}
	for _, batch := range []int{1, 100} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			ctx := context.Background()
			recs := make([]bus.Record, batch)
			i := 0
			for b.Loop() {
				for j := range recs {
					recs[j] = rec(i)
					i++
				}
				if err := bs.Publish(ctx, recs...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "records/s")
		})
	}
	// Concurrent single-record publishes, like the ingester's per-message
	// MQTT handlers: franz-go batches them per partition.
	b.Run("parallel/batch=1", func(b *testing.B) {
		b.SetParallelism(16) // goroutines per GOMAXPROCS
		ctx := context.Background()
		var mu sync.Mutex
		total := 0
		b.RunParallel(func(pb *testing.PB) {
			n := 0
			for pb.Next() {
				if err := bs.Publish(ctx, rec(n)); err != nil {
					b.Error(err)
					return
				}
				n++
			}
			mu.Lock()
			total += n
			mu.Unlock()
		})
		b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "records/s")
	})
}
