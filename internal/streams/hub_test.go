package streams_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/streams"
	"github.com/flock-io/flock-api/internal/testutil"
)

type env struct {
	bus *bus.Bus
	hub *streams.Hub
	srv *httptest.Server
}

// start runs a hub on an embedded Kafka and serves it as SSE: /events?org=
// &last_event_id=, through the real SSE writer.
func start(t *testing.T, o streams.Options) *env {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	b, err := bus.Open(context.Background(), bus.Config{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	o.Log = log
	o.MaxWait = 50 * time.Millisecond
	h := streams.New(b, o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		org, _ := uuid.Parse(r.URL.Query().Get("org"))
		st := &streams.Stream{Kind: streams.KindEvents, Filter: &streams.Filter{Org: org}}
		if hb, err := time.ParseDuration(r.URL.Query().Get("heartbeat")); err == nil {
			st.Heartbeat = hb
		}
		if id := r.URL.Query().Get("last_event_id"); id != "" {
			p, err := streams.Decode(id, streams.KindEvents)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			st.From = p
		}
		if err := h.ServeSSE(r.Context(), w, st); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	}))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("hub: %v", err)
		}
		srv.Close()
		b.Close()
	})
	return &env{bus: b, hub: h, srv: srv}
}

type sseEvent struct {
	ID, Type string
	Data     map[string]any
}

type sseClient struct {
	resp   *http.Response
	sc     *bufio.Scanner
	cancel context.CancelFunc
}

func (e *env) connect(t *testing.T, org uuid.UUID, last string) *sseClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	u := e.srv.URL + "/events?org=" + org.String()
	if last != "" {
		u += "&last_event_id=" + last
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		cancel()
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, b)
	}
	c := &sseClient{resp: resp, sc: bufio.NewScanner(resp.Body), cancel: cancel}
	c.sc.Buffer(make([]byte, 1<<20), 4<<20)
	t.Cleanup(c.close)
	return c
}

func (c *sseClient) close() { c.cancel(); c.resp.Body.Close() }

// next reads one event (skipping comments); io.EOF at the end.
func (c *sseClient) next() (sseEvent, error) {
	var ev sseEvent
	var data string
	for c.sc.Scan() {
		line := c.sc.Text()
		switch {
		case line == "":
			if ev.Type == "" && data == "" {
				continue
			}
			if err := json.Unmarshal([]byte(data), &ev.Data); err != nil {
				return ev, fmt.Errorf("data %q: %w", data, err)
			}
			return ev, nil
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			ev.ID = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.Type = line[7:]
		case strings.HasPrefix(line, "data: "):
			data = line[6:]
		}
	}
	if err := c.sc.Err(); err != nil {
		return ev, err
	}
	return ev, io.EOF
}

func stateRecord(org, fleet, device uuid.UUID, n int, pad int) bus.Record {
	v := fmt.Sprintf(`{"device_id":%q,"org_id":%q,"fleet_id":%q,"received_at":%q,"state":{"seq":%d,"pad":%q}}`,
		device, org, fleet, time.Now().UTC().Format(time.RFC3339Nano), n, strings.Repeat("x", pad))
	return bus.Record{Topic: bus.TopicDeviceState, Key: []byte(device.String()), Value: []byte(v)}
}

func seqOf(t *testing.T, ev sseEvent) int {
	t.Helper()
	data, _ := ev.Data["data"].(map[string]any)
	state, _ := data["state"].(map[string]any)
	n, ok := state["seq"].(float64)
	if !ok {
		t.Fatalf("event %+v has no state.seq", ev)
	}
	return int(n)
}

// waitStreams waits until the hub holds n streams (a connected client is
// registered before its response head is sent, so this is only needed
// for streams the test did not read from).
func (e *env) waitStreams(t *testing.T, n int) {
	t.Helper()
	testutil.Eventually(t, fmt.Sprintf("%d streams", n), func() error {
		if got := e.hub.Streams(); got != n {
			return fmt.Errorf("%d streams", got)
		}
		return nil
	})
}

func TestLiveFilterResumeAndGap(t *testing.T) {
	e := start(t, streams.Options{})
	ctx := context.Background()
	org, other := uuid.New(), uuid.New()
	fleet, device := uuid.New(), uuid.New()

	c := e.connect(t, org, "")
	publish := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			// The other organisation's records go to another topic, so
			// the state topic holds only the device's (see the gap below).
			foreign := stateRecord(other, uuid.New(), uuid.New(), i, 0)
			foreign.Topic = bus.TopicDeviceConnectivity
			if err := e.bus.Publish(ctx, foreign, stateRecord(org, fleet, device, i, 0)); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(0, 5)
	var ids []string
	for i := range 5 {
		ev, err := c.next()
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type != "device.state" || seqOf(t, ev) != i || ev.Data["org_id"] != org.String() || ev.Data["id"] != ev.ID {
			t.Fatalf("event %d: %+v", i, ev)
		}
		ids = append(ids, ev.ID)
	}
	c.close()

	// Published while disconnected, then more once back: the resumed
	// stream holds 3..9 in order, once each.
	publish(5, 8)
	r := e.connect(t, org, ids[2])
	publish(8, 10)
	for want := 3; want < 10; want++ {
		ev, err := r.next()
		if err != nil {
			t.Fatal(err)
		}
		if got := seqOf(t, ev); got != want {
			t.Fatalf("resumed stream: seq %d, want %d", got, want)
		}
	}

	// Retention drops the partition's first records: resuming from the
	// first id announces the gap, then sends what is still held.
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.bus.Brokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, bus.TopicDeviceState)
	if err != nil {
		t.Fatal(err)
	}
	del := kadm.Offsets{}
	ends.Each(func(o kadm.ListedOffset) {
		// Keep the last 4 records of every partition that has 10 or more
		// (only the org's device has).
		if o.Offset >= 10 {
			del.AddOffset(o.Topic, o.Partition, o.Offset-4, -1)
		}
	})
	if _, err := adm.DeleteRecords(ctx, del); err != nil {
		t.Fatal(err)
	}
	g := e.connect(t, org, ids[0])
	ev, err := g.next()
	if err != nil {
		t.Fatal(err)
	}
	if ev.Type != "gap" || ev.ID == "" {
		t.Fatalf("first event after retention: %+v, want a gap", ev)
	}
	for want := 6; want < 10; want++ {
		ev, err := g.next()
		if err != nil {
			t.Fatal(err)
		}
		if got := seqOf(t, ev); got != want {
			t.Fatalf("after the gap: seq %d, want %d", got, want)
		}
	}
}

func TestResumeWhilePublishing(t *testing.T) {
	e := start(t, streams.Options{Buffer: 4})
	ctx := context.Background()
	org, fleet := uuid.New(), uuid.New()
	devices := []uuid.UUID{uuid.New(), uuid.New(), uuid.New(), uuid.New(), uuid.New(), uuid.New()}
	const total = 600
	pubDone := make(chan error, 1)
	c := e.connect(t, org, "")
	// A first event gives the client an id to come back with even when
	// it is dropped before reading any of the burst.
	if err := e.bus.Publish(ctx, stateRecord(org, fleet, uuid.New(), -1, 0)); err != nil {
		t.Fatal(err)
	}
	first, err := c.next()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for i := range total {
			d := devices[i%len(devices)]
			if err := e.bus.Publish(ctx, stateRecord(org, fleet, d, i, 0)); err != nil {
				pubDone <- err
				return
			}
		}
		pubDone <- nil
	}()
	// Reconnect every 37 events, resuming from the last id; each device's
	// sequence must come complete, in order, once.
	next := map[string]int{}
	for i := range devices {
		next[devices[i].String()] = i
	}
	got, last, drops := 0, first.ID, 0
	for got < total {
		ev, err := c.next()
		if err != nil {
			t.Fatalf("after %d events: %v", got, err)
		}
		if ev.Type == "error" {
			// Too slow for a queue of 4 while the publisher bursts: a
			// client reconnects from its last id, as after any drop.
			drops++
			c.close()
			c = e.connect(t, org, last)
			continue
		}
		if ev.Type != "device.state" {
			t.Fatalf("event %+v", ev)
		}
		d := ev.Data["device_id"].(string)
		if s := seqOf(t, ev); s != next[d] {
			t.Fatalf("device %s: seq %d, want %d (after %d events)", d, s, next[d], got)
		}
		next[d] += len(devices)
		got++
		last = ev.ID
		if got%37 == 0 {
			c.close()
			c = e.connect(t, org, last)
		}
	}
	if err := <-pubDone; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d events, %d slow-consumer drops", got, drops)
}

func TestSlowConsumerIsDropped(t *testing.T) {
	e := start(t, streams.Options{Buffer: 4})
	ctx := context.Background()
	org, fleet, device := uuid.New(), uuid.New(), uuid.New()
	c := e.connect(t, org, "")
	e.waitStreams(t, 1)
	// The client reads nothing: the socket fills, the handler blocks, its
	// queue fills, and the hub drops the stream.
	for i := 0; e.hub.Streams() > 0; i++ {
		if err := e.bus.Publish(ctx, stateRecord(org, fleet, device, i, 64<<10)); err != nil {
			t.Fatal(err)
		}
		if i > 100000 {
			t.Fatal("never dropped")
		}
	}
	// Now it reads: what was in flight, then the reason, then the end.
	var last sseEvent
	for {
		ev, err := c.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		last = ev
	}
	data, _ := last.Data["data"].(map[string]any)
	if last.Type != "error" || data["code"] != "slow_consumer" || last.ID != "" {
		t.Fatalf("last event %+v, want error slow_consumer without an id", last)
	}
}

func TestBadIDs(t *testing.T) {
	good := (&streams.Position{Kind: streams.KindEvents}).Encode()
	for _, tc := range []struct{ name, id string }{
		{"not base64", "!!!"},
		{"empty", ""},
		{"truncated", good[:len(good)-2]},
		{"other kind", (&streams.Position{Kind: streams.KindLogs}).Encode()},
		{"trailing", good + "AAAA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := streams.Decode(tc.id, streams.KindEvents); err == nil {
				t.Fatalf("Decode(%q) accepted it", tc.id)
			}
		})
	}
	p := &streams.Position{Kind: streams.KindLogs, Within: &streams.Within{Topic: 5, Partition: 1, Skip: 3}}
	p.Offs[5] = []int64{7, 1 << 40, 0}
	back, err := streams.Decode(p.Encode(), streams.KindLogs)
	if err != nil || back.Encode() != p.Encode() || *back.Within != *p.Within {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
}

// TestHeartbeat: an idle stream gets a comment line every heartbeat, so
// proxies do not close it.
func TestHeartbeat(t *testing.T) {
	e := start(t, streams.Options{})
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/events?heartbeat=20ms&org="+uuid.NewString(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for beats := 0; beats < 2; {
		if !sc.Scan() {
			t.Fatalf("stream ended: %v", sc.Err())
		}
		switch line := sc.Text(); {
		case line == ": heartbeat":
			beats++
		case line != "":
			t.Fatalf("idle stream sent %q", line)
		}
	}
}
