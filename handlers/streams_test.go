package handlers_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/telemetry"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// streamEnv is the api target on a Kafka the test shares: it publishes
// records as the ingester and the scheduler would, and clients read them
// through the real HTTP server.
type streamEnv struct {
	srv *apptest.Server
	bus *bus.Bus
	w   *world
}

func startStreamEnv(t *testing.T) *streamEnv {
	t.Helper()
	return startStreamEnvWith(t)
}

// startStreamEnvWith starts the api target with more flags.
func startStreamEnvWith(t *testing.T, flags ...string) *streamEnv {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithCancel(context.Background())
	addrc := make(chan string, 1)
	served := make(chan error, 1)
	go func() { served <- bus.ServeEmbedded(ctx, "127.0.0.1:0", log, func(a string) { addrc <- a }) }()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-served:
		cancel()
		t.Fatalf("embedded kafka: %v", err)
	}
	// Registered first, so it runs last: after the server and the bus
	// below stopped using it.
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("embedded kafka: %v", err)
		}
	})
	b, err := bus.Open(context.Background(), bus.Config{Brokers: []string{addr}, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	srv := apptest.Start(t, append([]string{"--target=api,registry-proxy", "--kafka-brokers=" + addr}, flags...)...)
	return &streamEnv{srv: srv, bus: b, w: newWorld(t, srv).withFleet(t)}
}

func (e *streamEnv) publishState(t *testing.T, device string, seqs ...int) {
	t.Helper()
	for _, n := range seqs {
		v := fmt.Sprintf(`{"device_id":%q,"org_id":%q,"fleet_id":%q,"received_at":%q,"state":{"seq":%d}}`,
			device, e.w.org, e.w.fleet, time.Now().UTC().Format(time.RFC3339Nano), n)
		if err := e.bus.Publish(context.Background(), bus.Record{Topic: bus.TopicDeviceState, Key: []byte(device), Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
}

type streamEvent struct {
	ID, Type string
	Doc      map[string]any
}

func (ev streamEvent) data() map[string]any { d, _ := ev.Doc["data"].(map[string]any); return d }

func (ev streamEvent) stateSeq() int {
	s, _ := ev.data()["state"].(map[string]any)
	n, _ := s["seq"].(float64)
	return int(n)
}

// eventReader is an SSE or WebSocket client of one stream.
type eventReader interface {
	next() (streamEvent, error)
	close()
}

type sseReader struct {
	resp *http.Response
	sc   *bufio.Scanner
}

// openSSE opens a stream; header adds request headers. A status other
// than 200 is returned with the problem body.
func openSSE(t *testing.T, srv *apptest.Server, path, token string, header http.Header) (*sseReader, int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var out map[string]any
		b, _ := io.ReadAll(resp.Body)
		_ = json.Unmarshal(b, &out)
		return nil, resp.StatusCode, out
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("GET %s: Content-Type %q", path, ct)
	}
	r := &sseReader{resp: resp, sc: bufio.NewScanner(resp.Body)}
	r.sc.Buffer(make([]byte, 64<<10), 1<<20)
	t.Cleanup(r.close)
	return r, 200, nil
}

func (r *sseReader) close() { r.resp.Body.Close() }

func (r *sseReader) next() (streamEvent, error) {
	var ev streamEvent
	var data string
	for r.sc.Scan() {
		line := r.sc.Text()
		switch {
		case line == "":
			if data == "" {
				continue
			}
			return ev, json.Unmarshal([]byte(data), &ev.Doc)
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "id: "):
			ev.ID = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.Type = line[7:]
		case strings.HasPrefix(line, "data: "):
			data = line[6:]
		}
	}
	if err := r.sc.Err(); err != nil {
		return ev, err
	}
	return ev, io.EOF
}

type wsReader struct {
	c      *websocket.Conn
	ctx    context.Context
	cancel context.CancelFunc
}

// openWS opens a WebSocket stream the way a browser must: the token in
// the subprotocol list.
func openWS(t *testing.T, srv *apptest.Server, path, token string) *wsReader {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+path,
		&websocket.DialOptions{Subprotocols: []string{"flock.v1", "bearer." + token}})
	if err != nil {
		cancel()
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dial %s: %d %v", path, status, err)
	}
	if c.Subprotocol() != "flock.v1" {
		t.Fatalf("subprotocol %q, want flock.v1", c.Subprotocol())
	}
	c.SetReadLimit(1 << 20)
	r := &wsReader{c: c, ctx: ctx, cancel: cancel}
	t.Cleanup(r.close)
	return r
}

func (r *wsReader) close() { _ = r.c.CloseNow(); r.cancel() }

func (r *wsReader) next() (streamEvent, error) {
	_, b, err := r.c.Read(r.ctx)
	if err != nil {
		return streamEvent{}, err
	}
	var ev streamEvent
	if err := json.Unmarshal(b, &ev.Doc); err != nil {
		return ev, err
	}
	ev.ID, _ = ev.Doc["id"].(string)
	ev.Type, _ = ev.Doc["type"].(string)
	return ev, nil
}

// expectSeqs reads state events and checks they are want, in order.
func expectSeqs(t *testing.T, r eventReader, want ...int) string {
	t.Helper()
	var last string
	for _, n := range want {
		ev, err := r.next()
		if err != nil {
			t.Fatalf("waiting for seq %d: %v", n, err)
		}
		if ev.Type != "device.state" || ev.stateSeq() != n || ev.Doc["id"] != ev.ID && ev.ID != "" {
			t.Fatalf("got %s seq %d (%v), want device.state seq %d", ev.Type, ev.stateSeq(), ev.Doc, n)
		}
		last, _ = ev.Doc["id"].(string)
	}
	return last
}

// TestStreamResume: a client that drops and comes back with its last id
// gets every event after it once, over SSE (Last-Event-ID) and WebSocket
// (last_event_id), whether the events came while it was away or after.
// A viewer may stream.
func TestStreamResume(t *testing.T) {
	e := startStreamEnv(t)
	w := e.w
	dev := w.device.id.String()
	for _, tc := range []struct {
		name string
		path string
		open func(path, last string) eventReader
	}{
		{"sse fleet", "/v1/fleets/" + w.fleet + "/events", func(path, last string) eventReader {
			h := http.Header{}
			if last != "" {
				h.Set("Last-Event-ID", last)
			}
			r, status, out := openSSE(t, e.srv, path, w.viewer, h)
			if status != 200 {
				t.Fatalf("GET %s = %d %v", path, status, out)
			}
			return r
		}},
		{"websocket device", "/v1/devices/" + dev + "/events/ws", func(path, last string) eventReader {
			if last != "" {
				path += "?last_event_id=" + last
			}
			return openWS(t, e.srv, path, w.viewer)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.open(tc.path, "")
			e.publishState(t, dev, 0, 1, 2)
			expectSeqs(t, r, 0, 1)
			last := expectSeqs(t, r, 2)
			r.close()
			e.publishState(t, dev, 3, 4)
			r = tc.open(tc.path, last)
			e.publishState(t, dev, 5, 6)
			expectSeqs(t, r, 3, 4, 5, 6)
		})
	}
}

// TestStreamRefusals: another organisation's fleet is 404 like every
// other path; a malformed resume id is 400 naming it; a WebSocket path
// asked without an upgrade is 400.
func TestStreamRefusals(t *testing.T) {
	e := startStreamEnv(t)
	w := e.w
	theirs := w.otherOrgFleet(t)
	for _, tc := range []struct {
		name, path string
		header     http.Header
		status     int
		field      string
	}{
		{"other org's fleet", "/v1/fleets/" + theirs + "/events", nil, 404, ""},
		{"other org's fleet ws", "/v1/fleets/" + theirs + "/events/ws", nil, 404, ""},
		{"bad last_event_id", "/v1/fleets/" + w.fleet + "/events?last_event_id=nope", nil, 400, "last_event_id"},
		{"bad Last-Event-ID", "/v1/orgs/" + w.org + "/events", http.Header{"Last-Event-Id": {"AQEA"}}, 400, "Last-Event-ID"},
		{"type the scope lacks", "/v1/devices/" + w.device.id.String() + "/events?types=rollout", nil, 400, "types"},
		{"ws without upgrade", "/v1/orgs/" + w.org + "/events/ws", nil, 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, status, out := openSSE(t, e.srv, tc.path, w.viewer, tc.header)
			if status != tc.status {
				t.Fatalf("GET %s = %d %v, want %d", tc.path, status, out, tc.status)
			}
			if tc.field != "" && !strings.Contains(fmt.Sprint(out["errors"]), tc.field) {
				t.Fatalf("GET %s: %v does not name %s", tc.path, out, tc.field)
			}
		})
	}
}

// TestLogStreamHistoryThenLive: lines are written to the store and put on
// the bus concurrently (as the ingester does) while the client connects;
// the client gets the newest `tail` stored lines, then every later line,
// each (service, seq) once and in order.
func TestLogStreamHistoryThenLive(t *testing.T) {
	e := startStreamEnv(t)
	w := e.w
	dev := w.device.id.String()
	store := telemetry.NewPostgres(e.srv.Pool(t))
	devID := w.device.id
	orgID := uuid.MustParse(w.org)
	base := time.Now().Add(-time.Minute).UTC()
	write := func(from, to int, busFirst bool) error {
		var lines []telemetry.LogLine
		var entries []string
		for s := from; s < to; s++ {
			ts := base.Add(time.Duration(s) * time.Millisecond)
			lines = append(lines, telemetry.LogLine{DeviceID: devID, OrgID: orgID, Service: "app", Seq: int64(s), TS: ts, Stream: "stdout", Line: fmt.Sprintf("line %d", s)})
			entries = append(entries, fmt.Sprintf(`{"service":"app","seq":%d,"ts":%q,"stream":"stdout","line":"line %d"}`, s, ts.Format(time.RFC3339Nano), s))
		}
		rec := bus.Record{Topic: bus.TopicDeviceLogs, Key: []byte(dev), Value: []byte(fmt.Sprintf(
			`{"device_id":%q,"org_id":%q,"fleet_id":%q,"received_at":%q,"entries":[%s]}`,
			dev, w.org, w.fleet, time.Now().UTC().Format(time.RFC3339Nano), strings.Join(entries, ",")))}
		ctx := context.Background()
		steps := []func() error{
			func() error { return store.WriteLogs(ctx, lines) },
			func() error { return e.bus.Publish(ctx, rec) },
		}
		if busFirst {
			steps[0], steps[1] = steps[1], steps[0]
		}
		for _, s := range steps {
			if err := s(); err != nil {
				return err
			}
		}
		return nil
	}
	if err := write(1, 51, false); err != nil {
		t.Fatal(err)
	}
	const last = 300
	done := make(chan error, 1)
	go func() {
		for s := 51; s <= last; s += 5 {
			if err := write(s, s+5, s%10 == 1); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for _, ws := range []bool{false, true} {
		var r eventReader
		path := "/v1/devices/" + dev + "/logs/stream?tail=20"
		if ws {
			r = openWS(t, e.srv, "/v1/devices/"+dev+"/logs/ws?tail=20", w.viewer)
		} else {
			sr, status, out := openSSE(t, e.srv, path, w.viewer, nil)
			if status != 200 {
				t.Fatalf("GET %s = %d %v", path, status, out)
			}
			r = sr
		}
		prev := 0
		for prev < last {
			ev, err := r.next()
			if err != nil {
				t.Fatalf("ws=%v after seq %d: %v", ws, prev, err)
			}
			d := ev.data()
			if ev.Type != "device.log" || d["service"] != "app" {
				t.Fatalf("ws=%v: event %v", ws, ev.Doc)
			}
			seq := int(d["seq"].(float64))
			if prev != 0 && seq != prev+1 {
				t.Fatalf("ws=%v: seq %d after %d: a line missing or repeated at the seam", ws, seq, prev)
			}
			prev = seq
		}
		r.close()
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestStreamSlowConsumer: a WebSocket client that stops reading is
// dropped once its queue is full (the server's memory does not grow with
// it); when it reads again it finds what was in flight, the error event
// and close code 1008.
func TestStreamSlowConsumer(t *testing.T) {
	e := startStreamEnv(t)
	w := e.w
	dev := w.device.id.String()
	r := openWS(t, e.srv, "/v1/devices/"+dev+"/events/ws", w.viewer)
	pad := strings.Repeat("x", 128<<10)
	n := 0
	testutil.Eventually(t, "the stream dropped as a slow consumer", func() error {
		for range 8 {
			v := fmt.Sprintf(`{"device_id":%q,"org_id":%q,"fleet_id":%q,"received_at":%q,"state":{"seq":%d,"pad":%q}}`,
				dev, w.org, w.fleet, time.Now().UTC().Format(time.RFC3339Nano), n, pad)
			n++
			if err := e.bus.Publish(context.Background(), bus.Record{Topic: bus.TopicDeviceState, Key: []byte(dev), Value: []byte(v)}); err != nil {
				return err
			}
		}
		if got := metric(t, e.srv, `flock_streams_dropped_total{reason="slow_consumer"}`); got < 1 {
			return fmt.Errorf("dropped %v after %d records", got, n)
		}
		return nil
	})
	var last streamEvent
	for {
		ev, err := r.next()
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
				t.Fatalf("stream ended with %v, want close 1008", err)
			}
			break
		}
		last = ev
	}
	if last.Type != "error" || last.data()["code"] != "slow_consumer" {
		t.Fatalf("last event %v, want error slow_consumer", last.Doc)
	}
}

// metric reads one series from the server's /metrics.
func metric(t *testing.T, srv *apptest.Server, series string) float64 {
	t.Helper()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return f
		}
	}
	return 0
}

// TestDeviceGroupStream: a device group's stream carries its members'
// events only.
func TestDeviceGroupStream(t *testing.T) {
	e := startStreamEnv(t)
	w := e.w
	member := w.device.id.String()
	outsider := w.addDevices(1)[0]
	must(t, e.srv, 200, "PATCH", "/v1/devices/"+member, w.developer, map[string]any{"tags": map[string]any{"site": "lab"}})
	group := must(t, e.srv, 201, "POST", "/v1/orgs/"+w.org+"/device-groups", w.owner,
		map[string]any{"name": "lab", "tags": map[string]any{"site": "lab"}})["id"].(string)
	r, status, out := openSSE(t, e.srv, "/v1/device-groups/"+group+"/events?types=device.state", w.viewer, nil)
	if status != 200 {
		t.Fatalf("group stream: %d %v", status, out)
	}
	e.publishState(t, outsider, 100)
	e.publishState(t, member, 1)
	e.publishState(t, outsider, 101)
	e.publishState(t, member, 2)
	for _, want := range []int{1, 2} {
		ev, err := r.next()
		if err != nil {
			t.Fatal(err)
		}
		if ev.Doc["device_id"] != member || ev.stateSeq() != want {
			t.Fatalf("group stream: %v, want the member's seq %d", ev.Doc, want)
		}
	}
}

// TestLogStreamResumeWithinARecord: a log record carries several lines,
// each its own event; a client that drops after the second line of a
// record and comes back with that line's id gets the rest of the record,
// then what follows, each line once.
func TestLogStreamResumeWithinARecord(t *testing.T) {
	e := startStreamEnv(t)
	w := e.w
	dev := w.device.id.String()
	publish := func(from, to int) {
		t.Helper()
		var entries []string
		for s := from; s < to; s++ {
			entries = append(entries, fmt.Sprintf(`{"service":"app","seq":%d,"ts":%q,"stream":"stdout","line":"line %d"}`,
				s, time.Now().UTC().Format(time.RFC3339Nano), s))
		}
		v := fmt.Sprintf(`{"device_id":%q,"org_id":%q,"fleet_id":%q,"received_at":%q,"entries":[%s]}`,
			dev, w.org, w.fleet, time.Now().UTC().Format(time.RFC3339Nano), strings.Join(entries, ","))
		if err := e.bus.Publish(context.Background(), bus.Record{Topic: bus.TopicDeviceLogs, Key: []byte(dev), Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
	read := func(r eventReader, want ...int) string {
		t.Helper()
		var id string
		for _, n := range want {
			ev, err := r.next()
			if err != nil {
				t.Fatal(err)
			}
			if ev.Type != "device.log" || int(ev.data()["seq"].(float64)) != n {
				t.Fatalf("got %v, want line %d", ev.Doc, n)
			}
			id = ev.ID
		}
		return id
	}
	path := "/v1/devices/" + dev + "/logs/stream?tail=0"
	r, status, out := openSSE(t, e.srv, path, w.viewer, nil)
	if status != 200 {
		t.Fatalf("%d %v", status, out)
	}
	publish(1, 6)
	id := read(r, 1, 2)
	r.close()
	publish(6, 9)
	r, _, _ = openSSE(t, e.srv, path, w.viewer, http.Header{"Last-Event-ID": {id}})
	read(r, 3, 4, 5, 6, 7, 8)
}

// TestRolloutStream: a rollout's stream carries its own records and the
// update events of its release's devices in its fleet, nothing else.
func TestRolloutStream(t *testing.T) {
	e := startStreamEnv(t)
	w := e.w
	w.t = t
	rollout := w.rolloutIn("ready")
	got := must(t, e.srv, 200, "GET", "/v1/rollouts/"+rollout, w.viewer, nil)
	release := got["release_id"].(string)
	r, status, out := openSSE(t, e.srv, "/v1/rollouts/"+rollout+"/events", w.viewer, nil)
	if status != 200 {
		t.Fatalf("%d %v", status, out)
	}
	dev := w.device.id.String()
	now := time.Now().UTC().Format(time.RFC3339Nano)
	update := func(rel, id string) bus.Record {
		return bus.Record{Topic: bus.TopicDeviceEvents, Key: []byte(dev), Value: []byte(fmt.Sprintf(
			`{"device_id":%q,"org_id":%q,"fleet_id":%q,"received_at":%q,"event":{"id":%q,"ts":%q,"type":"download_started","release_id":%q}}`,
			dev, w.org, w.fleet, now, id, now, rel))}
	}
	rolloutRec := func(id, rid string) bus.Record {
		return bus.Record{Topic: bus.TopicRolloutEvents, Key: []byte(rid), Value: []byte(fmt.Sprintf(
			`{"id":%q,"rollout_id":%q,"org_id":%q,"fleet_id":%q,"event":"started","state":"running","at":%q}`,
			id, rid, w.org, w.fleet, now))}
	}
	recs := []bus.Record{
		update(w.release, "00000000-0000-0000-0000-000000000001"), // another release: not this rollout's
		rolloutRec("00000000-0000-0000-0000-000000000002", uuid.NewString()),
		update(release, "00000000-0000-0000-0000-000000000003"),
		rolloutRec("00000000-0000-0000-0000-000000000004", rollout),
	}
	for _, rec := range recs {
		if err := e.bus.Publish(context.Background(), rec); err != nil {
			t.Fatal(err)
		}
	}
	// The two topics are read side by side: the order between them is not
	// given.
	seen := map[string]bool{}
	for range 2 {
		ev, err := r.next()
		if err != nil {
			t.Fatal(err)
		}
		switch d := ev.data(); ev.Type {
		case "rollout":
			seen["rollout "+d["id"].(string)] = true
		case "device.update":
			u := d["event"].(map[string]any)
			seen["update "+u["id"].(string)+" "+u["release_id"].(string)] = true
		}
	}
	if !seen["rollout 00000000-0000-0000-0000-000000000004"] || !seen["update 00000000-0000-0000-0000-000000000003 "+release] {
		t.Fatalf("rollout stream: %v", seen)
	}
}

// TestStreamGap: a client that comes back with an id older than what the
// bus still holds is told, by a gap event, then gets what is held.
func TestStreamGap(t *testing.T) {
	e := startStreamEnv(t)
	w := e.w
	dev := w.device.id.String()
	path := "/v1/devices/" + dev + "/events"
	r, status, out := openSSE(t, e.srv, path, w.viewer, nil)
	if status != 200 {
		t.Fatalf("%d %v", status, out)
	}
	e.publishState(t, dev, 0)
	first := expectSeqs(t, r, 0)
	r.close()
	e.publishState(t, dev, 1, 2, 3, 4)
	// Retention drops the device's partition up to its last two records.
	cl, err := kgo.NewClient(kgo.SeedBrokers(e.bus.Brokers()...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(context.Background(), bus.TopicDeviceState)
	if err != nil {
		t.Fatal(err)
	}
	del := kadm.Offsets{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset == 5 { // the device's partition: nothing else publishes state here
			del.AddOffset(o.Topic, o.Partition, 3, -1)
		}
	})
	if len(del) != 1 {
		t.Fatalf("end offsets %v: want one partition with the device's 5 records", ends)
	}
	if _, err := adm.DeleteRecords(context.Background(), del); err != nil {
		t.Fatal(err)
	}
	r, _, _ = openSSE(t, e.srv, path, w.viewer, http.Header{"Last-Event-ID": {first}})
	// The replay announces what went before the server had read it too;
	// records the server had not read yet are announced by its reader:
	// one gap event or two, 2 records in all, before the first one held.
	lost := 0
	for lost < 2 {
		ev, err := r.next()
		if err != nil {
			t.Fatal(err)
		}
		var n int
		detail, _ := ev.data()["detail"].(string)
		if ev.Type != "gap" || ev.data()["code"] != "retention" || ev.ID == "" {
			t.Fatalf("event %v, want a gap (%d records announced so far)", ev.Doc, lost)
		}
		if _, err := fmt.Sscanf(detail, "the bus no longer holds %d records", &n); err != nil {
			t.Fatalf("gap detail %q: %v", detail, err)
		}
		lost += n
	}
	if lost != 2 {
		t.Fatalf("gaps announce %d records, want 2", lost)
	}
	expectSeqs(t, r, 3, 4)
}

// TestLogStreamSinceAndResumeInHistory: history from `since`, oldest
// first; a client that drops inside the history comes back with that
// line's id and gets the rest of the history, then the lines written
// since, each once.
func TestLogStreamSinceAndResumeInHistory(t *testing.T) {
	e := startStreamEnv(t)
	w := e.w
	dev := w.device.id.String()
	store := telemetry.NewPostgres(e.srv.Pool(t))
	base := time.Now().Add(-time.Minute).UTC().Truncate(time.Millisecond)
	ts := func(s int) time.Time { return base.Add(time.Duration(s) * time.Millisecond) }
	write := func(from, to int) {
		t.Helper()
		var lines []telemetry.LogLine
		var entries []string
		for s := from; s < to; s++ {
			lines = append(lines, telemetry.LogLine{DeviceID: w.device.id, OrgID: uuid.MustParse(w.org), Service: "app", Seq: int64(s), TS: ts(s), Stream: "stdout", Line: fmt.Sprintf("line %d", s)})
			entries = append(entries, fmt.Sprintf(`{"service":"app","seq":%d,"ts":%q,"stream":"stdout","line":"line %d"}`, s, ts(s).Format(time.RFC3339Nano), s))
		}
		if err := store.WriteLogs(context.Background(), lines); err != nil {
			t.Fatal(err)
		}
		v := fmt.Sprintf(`{"device_id":%q,"org_id":%q,"fleet_id":%q,"received_at":%q,"entries":[%s]}`,
			dev, w.org, w.fleet, time.Now().UTC().Format(time.RFC3339Nano), strings.Join(entries, ","))
		if err := e.bus.Publish(context.Background(), bus.Record{Topic: bus.TopicDeviceLogs, Key: []byte(dev), Value: []byte(v)}); err != nil {
			t.Fatal(err)
		}
	}
	read := func(r eventReader, from, to int) string {
		t.Helper()
		var id string
		for s := from; s <= to; s++ {
			ev, err := r.next()
			if err != nil {
				t.Fatal(err)
			}
			if got := int(ev.data()["seq"].(float64)); ev.Type != "device.log" || got != s {
				t.Fatalf("got %v, want line %d", ev.Doc, s)
			}
			id = ev.ID
		}
		return id
	}
	write(1, 31)
	path := "/v1/devices/" + dev + "/logs/stream?since=" + ts(11).Format(time.RFC3339Nano)
	r, status, out := openSSE(t, e.srv, path, w.viewer, nil)
	if status != 200 {
		t.Fatalf("%d %v", status, out)
	}
	id := read(r, 11, 15)
	r.close()
	write(31, 36)
	r, _, _ = openSSE(t, e.srv, path, w.viewer, http.Header{"Last-Event-ID": {id}})
	read(r, 16, 35)
	write(36, 38)
	read(r, 36, 37)
}
