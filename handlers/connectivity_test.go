package handlers_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/livestate"
	"github.com/flock-io/flock-api/internal/telemetry"
)

// TestDeviceConnectivityList pages a device's history newest first across
// events that share an instant, and keeps other organisations out.
func TestDeviceConnectivityList(t *testing.T) {
	e := startLiveServer(t, liveOptions{deps: func(e *liveEnv, d *handlers.Deps) { d.Telemetry = telemetry.NewPostgres(e.pool) }})
	srv := e.srv
	w := newWorld(t, srv).withFleet(t)
	dev := w.device.id
	org := uuid.MustParse(w.org)

	t0 := time.Date(2026, 3, 1, 8, 0, 0, 123456000, time.UTC)
	t1, t2 := t0.Add(time.Minute), t0.Add(2*time.Minute)
	ev := func(seq int64, event string, at time.Time) telemetry.Connectivity {
		return telemetry.Connectivity{DeviceID: dev, OrgID: org, ConnectionSeq: seq, Event: event, At: at}
	}
	// Ties: connection 1's disconnect and 2's connect at t1; connection 2's
	// disconnect and both events of connection 3 at t2.
	stored := []telemetry.Connectivity{
		ev(1, telemetry.EventConnected, t0), ev(1, telemetry.EventDisconnected, t1),
		ev(2, telemetry.EventConnected, t1), ev(2, telemetry.EventDisconnected, t2),
		ev(3, telemetry.EventConnected, t2), ev(3, telemetry.EventDisconnected, t2),
	}
	other := ev(9, telemetry.EventConnected, t2)
	other.DeviceID = uuid.New()
	store := telemetry.NewPostgres(e.pool)
	if err := store.WriteConnectivity(t.Context(), append(stored, other)); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"3 disconnected " + t2.Format(time.RFC3339Nano), "3 connected " + t2.Format(time.RFC3339Nano),
		"2 disconnected " + t2.Format(time.RFC3339Nano), "2 connected " + t1.Format(time.RFC3339Nano),
		"1 disconnected " + t1.Format(time.RFC3339Nano), "1 connected " + t0.Format(time.RFC3339Nano),
	}

	base := "/v1/devices/" + dev.String() + "/connectivity"
	for limit := 1; limit <= len(want)+1; limit++ {
		var got []string
		q := fmt.Sprintf("%s?limit=%d", base, limit)
		for pages := 0; ; pages++ {
			if pages > len(want) {
				t.Fatalf("limit %d: paging does not end", limit)
			}
			page := must(t, srv, 200, "GET", q, w.viewer, nil)
			for _, it := range page["items"].([]any) {
				m := it.(map[string]any)
				at, err := time.Parse(time.RFC3339Nano, m["at"].(string))
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, fmt.Sprintf("%v %v %s", m["connection_seq"], m["event"], at.UTC().Format(time.RFC3339Nano)))
			}
			next, ok := page["next_cursor"].(string)
			if !ok {
				break
			}
			q = fmt.Sprintf("%s?limit=%d&cursor=%s", base, limit, next)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("limit %d: history\n%v\nwant\n%v", limit, got, want)
		}
	}

	// A device without history has an empty one.
	fresh := newDevice(t)
	must(t, srv, 201, "POST", "/device/v1/register", "", fresh.registration(w.provKey))
	if items := must(t, srv, 200, "GET", "/v1/devices/"+fresh.id.String()+"/connectivity", w.viewer, nil)["items"].([]any); len(items) != 0 {
		t.Fatalf("fresh device's history = %v", items)
	}

	// Another organisation's device does not exist for this one.
	theirs := &world{srv: srv, t: t, org: w.otherOrg, owner: w.outsider}
	theirs.withFleet(t)
	status, _, out := call(t, srv, "GET", "/v1/devices/"+theirs.device.id.String()+"/connectivity", w.owner, nil)
	if status != 404 || out["code"] != "not_found" {
		t.Fatalf("another organisation's device = %d %v", status, out)
	}
	if status, _, _ := call(t, srv, "GET", base, "", nil); status != 401 {
		t.Fatalf("anonymous = %d, want 401", status)
	}

	// Cursors this API did not hand out are the client's error.
	forged := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	for _, c := range []string{
		"bogus",
		forged(map[string]any{"t": t1}), // no event
		forged(map[string]any{"t": t1, "s": 1, "e": "rebooted"}),           // unknown event
		forged(map[string]any{"s": 1, "e": "connected"}),                   // no time
		forged(map[string]any{"t": "yesterday", "s": 1, "e": "connected"}), // not a time
		forged(map[string]any{"t": t1, "s": "one", "e": telemetry.EventConnected}),
	} {
		req, _ := http.NewRequest("GET", srv.URL+base+"?cursor="+c, nil)
		req.Header.Set("Authorization", "Bearer "+w.viewer)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var p problem.Problem
		err = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 400 || resp.Header.Get("Content-Type") != problem.ContentType ||
			p.Code != "validation_failed" || len(p.Errors) != 1 || p.Errors[0].Field != "cursor" {
			t.Errorf("cursor %q = %d %s %+v", c, resp.StatusCode, resp.Header.Get("Content-Type"), p)
		}
	}
}

// TestConnectivityQueries drives the two queries the ingester calls and
// checks what the API then says about the devices.
func TestConnectivityQueries(t *testing.T) {
	e := startLiveServer(t, liveOptions{})
	srv := e.srv
	w := newWorld(t, srv).withFleet(t)
	q := db.New(e.pool)
	ctx := t.Context()

	mqttDev := w.device.id  // connects over MQTT
	restDev := newDevice(t) // reports over REST only
	must(t, srv, 201, "POST", "/device/v1/register", "", restDev.registration(w.provKey))
	quiet := newDevice(t) // never heard from
	must(t, srv, 201, "POST", "/device/v1/register", "", quiet.registration(w.provKey))
	must(t, srv, 204, "PATCH", "/device/v1/state", restDev.token(t, srv), map[string]any{"seq": 1, "os_version": "1"})

	type change struct {
		id     uuid.UUID
		conn   int64
		online bool
		at     time.Time
	}
	apply := func(want int64, cs ...change) {
		t.Helper()
		var p db.DevicesApplyConnectivityParams
		for _, c := range cs {
			p.Ids = append(p.Ids, c.id)
			p.Keys = append(p.Keys, int64(livestate.ConnSeq(c.conn, c.online)))
			p.Connected = append(p.Connected, c.online)
			p.Ats = append(p.Ats, c.at)
		}
		n, err := q.DevicesApplyConnectivity(ctx, p)
		if err != nil || n != want {
			t.Fatalf("DevicesApplyConnectivity(%+v) = %d, %v; want %d rows", cs, n, err, want)
		}
	}
	type seen struct {
		online   bool
		lastSeen time.Time // zero: none
	}
	check := func(id uuid.UUID, want seen) {
		t.Helper()
		d := must(t, srv, 200, "GET", "/v1/devices/"+id.String(), w.viewer, nil)
		var last time.Time
		if s, ok := d["last_seen_at"].(string); ok {
			var err error
			if last, err = time.Parse(time.RFC3339Nano, s); err != nil {
				t.Fatal(err)
			}
		}
		if d["online"] != want.online || !last.Equal(want.lastSeen) {
			t.Fatalf("device %s: online %v, last seen %v; want %v, %v", id, d["online"], last, want.online, want.lastSeen)
		}
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	t1, t2, t3 := now.Add(-3*time.Minute), now.Add(-2*time.Minute), now.Add(-time.Minute)

	// Connection 5 comes up.
	apply(1, change{mqttDev, 5, true, t2})
	check(mqttDev, seen{true, t2})
	// A late disconnect of connection 4 and a redelivered connect change nothing.
	apply(0, change{mqttDev, 4, false, t3})
	apply(0, change{mqttDev, 5, true, t3})
	check(mqttDev, seen{true, t2})
	// Connection 5 goes down: the device is offline even though it was just seen.
	apply(1, change{mqttDev, 5, false, t3})
	check(mqttDev, seen{false, t3})
	// A connect of the same connection after its disconnect (a duplicate) cannot revive it.
	apply(0, change{mqttDev, 5, true, now})
	check(mqttDev, seen{false, t3})
	// Connection 6 comes up; its older timestamp does not move last_seen_at back.
	apply(1, change{mqttDev, 6, true, t1})
	check(mqttDev, seen{true, t3})

	// A device that reported over REST a moment ago but whose MQTT
	// connection ended is offline; one that never connected is online
	// while it reports. Unknown devices in a batch are skipped.
	restSeen := must(t, srv, 200, "GET", "/v1/devices/"+restDev.id.String(), w.viewer, nil)
	if restSeen["online"] != true {
		t.Fatalf("REST-only device just reported: %v", restSeen)
	}
	apply(1, change{mqttDev, 6, true, t3}, change{uuid.New(), 1, true, t3}, change{quiet.id, 1, false, t1})
	check(quiet.id, seen{false, t1})

	// DevicesTouch: last_seen_at moves forward only, and an unseen device
	// gets one.
	other := newDevice(t)
	must(t, srv, 201, "POST", "/device/v1/register", "", other.registration(w.provKey))
	touch := func(ids []uuid.UUID, ats []time.Time) {
		t.Helper()
		if err := q.DevicesTouch(ctx, db.DevicesTouchParams{Ids: ids, Ats: ats}); err != nil {
			t.Fatal(err)
		}
	}
	touch([]uuid.UUID{mqttDev, other.id}, []time.Time{t1, t2})
	check(mqttDev, seen{true, t3})
	check(other.id, seen{true, t2}) // never connected over MQTT: seen recently is online
	touch([]uuid.UUID{other.id}, []time.Time{t3})
	check(other.id, seen{true, t3})
	touch([]uuid.UUID{other.id}, []time.Time{now.Add(-time.Hour)})
	check(other.id, seen{true, t3})
	// Long ago is offline for a device without MQTT.
	old := newDevice(t)
	must(t, srv, 201, "POST", "/device/v1/register", "", old.registration(w.provKey))
	touch([]uuid.UUID{old.id}, []time.Time{now.Add(-time.Hour)})
	check(old.id, seen{false, now.Add(-time.Hour)})

	// The list filter agrees with the devices: online are mqttDev (connected),
	// restDev and other (recent, no MQTT); offline are quiet (disconnected)
	// and old (long ago).
	list := func(q string) map[string]bool {
		t.Helper()
		out := map[string]bool{}
		for _, d := range must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/devices"+q, w.viewer, nil)["items"].([]any) {
			out[d.(map[string]any)["id"].(string)] = true
		}
		return out
	}
	on, off := list("?online=true"), list("?online=false")
	wantOn := []uuid.UUID{mqttDev, restDev.id, other.id}
	wantOff := []uuid.UUID{quiet.id, old.id}
	if len(on) != len(wantOn) || len(off) != len(wantOff) {
		t.Fatalf("online %v, offline %v", on, off)
	}
	for _, id := range wantOn {
		if !on[id.String()] {
			t.Errorf("%s missing from ?online=true", id)
		}
	}
	for _, id := range wantOff {
		if !off[id.String()] {
			t.Errorf("%s missing from ?online=false", id)
		}
	}
}

// countingKV counts the KV round trips the API makes.
type countingKV struct {
	kv.Store
	gets, mgets int
}

func (c *countingKV) Get(ctx context.Context, key string) ([]byte, error) {
	c.gets++
	return c.Store.Get(ctx, key)
}

func (c *countingKV) MGet(ctx context.Context, keys ...string) ([][]byte, error) {
	c.mgets++
	return c.Store.MGet(ctx, keys...)
}

// TestDeviceLiveReportedState: a device's reported state comes from the KV
// store when the ingester's copy there is newer than PostgreSQL's.
func TestDeviceLiveReportedState(t *testing.T) {
	mem := kv.NewMemory()
	t.Cleanup(func() { _ = mem.Close() })
	counter := &countingKV{Store: mem}
	e := startLiveServer(t, liveOptions{deps: func(_ *liveEnv, d *handlers.Deps) { d.KV = counter }})
	srv := e.srv
	w := newWorld(t, srv).withFleet(t)
	ctx := t.Context()

	put := func(id uuid.UUID, seq uint64, at time.Time, os string) {
		t.Helper()
		state, _ := json.Marshal(map[string]any{"seq": seq, "os_version": os, "ip_addresses": []string{"10.0.0.9"}})
		v, _ := json.Marshal(livestate.State{ReceivedAt: at, State: state})
		if ok, err := mem.SetIfNewer(ctx, livestate.StateKey(id), seq, v, livestate.StateTTL); err != nil || !ok {
			t.Fatalf("SetIfNewer = %v, %v", ok, err)
		}
	}
	osOf := func(d map[string]any) any {
		rs, ok := d["reported_state"].(map[string]any)
		if !ok {
			return nil
		}
		return rs["os_version"]
	}
	get := func(id uuid.UUID) map[string]any {
		t.Helper()
		return must(t, srv, 200, "GET", "/v1/devices/"+id.String(), w.viewer, nil)
	}

	// REST report, then an older state in KV: PostgreSQL's wins.
	dev := w.device
	devToken := dev.token(t, srv)
	must(t, srv, 204, "PATCH", "/device/v1/state", devToken, map[string]any{"seq": 5, "os_version": "rest-1"})
	put(dev.id, 3, time.Now().Add(time.Hour), "mqtt-1")
	if d := get(dev.id); osOf(d) != "rest-1" {
		t.Fatalf("older KV state shown: %v", d)
	}
	// A newer state in KV wins, and dates last_seen_at.
	at := time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond)
	put(dev.id, 6, at, "mqtt-2")
	d := get(dev.id)
	if osOf(d) != "mqtt-2" || d["last_seen_at"] != at.Format(time.RFC3339Nano) || d["reported_state"].(map[string]any)["seq"] != float64(6) {
		t.Fatalf("newer KV state not shown: %v", d)
	}
	// HTTP reports follow the same order: a repeat of the newest stored seq
	// is a retry (204, nothing changes), an older one is refused naming the
	// newest, a newer one is stored and shown over the KV's older state.
	must(t, srv, 204, "PATCH", "/device/v1/state", devToken, map[string]any{"seq": 5, "os_version": "rest-retry"})
	stale := must(t, srv, 409, "PATCH", "/device/v1/state", devToken, map[string]any{"seq": 4, "os_version": "rest-old"})
	if stale["code"] != "stale_state" || !strings.Contains(stale["detail"].(string), "below 5") {
		t.Fatalf("stale report: %v", stale)
	}
	if d := get(dev.id); osOf(d) != "mqtt-2" {
		t.Fatalf("a refused or repeated report changed the state: %v", d)
	}
	must(t, srv, 204, "PATCH", "/device/v1/state", devToken, map[string]any{"seq": 7, "os_version": "rest-7"})
	if d := get(dev.id); osOf(d) != "rest-7" {
		t.Fatalf("newer HTTP state not shown over the KV's: %v", d)
	}
	// A device that reported only over MQTT shows that; one that never
	// reported shows none.
	mqttOnly, silent := newDevice(t), newDevice(t)
	for _, x := range []*fakeDevice{mqttOnly, silent} {
		must(t, srv, 201, "POST", "/device/v1/register", "", x.registration(w.provKey))
	}
	put(mqttOnly.id, 1, time.Now(), "mqtt-only")
	if d := get(mqttOnly.id); osOf(d) != "mqtt-only" {
		t.Fatalf("MQTT-only device: %v", d)
	}
	if d := get(silent.id); d["reported_state"] != nil {
		t.Fatalf("silent device shows a state: %v", d)
	}

	// The list reads a whole page in one MGet.
	counter.gets, counter.mgets = 0, 0
	page := must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/devices?limit=2", w.viewer, nil)
	page2 := must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/devices?limit=2&cursor="+page["next_cursor"].(string), w.viewer, nil)
	if counter.mgets != 2 || counter.gets != 0 {
		t.Fatalf("two pages took %d MGet and %d Get calls, want 2 and 0", counter.mgets, counter.gets)
	}
	byID := map[string]any{}
	for _, it := range append(page["items"].([]any), page2["items"].([]any)...) {
		m := it.(map[string]any)
		byID[m["id"].(string)] = osOf(m)
	}
	if byID[dev.id.String()] != "rest-7" || byID[mqttOnly.id.String()] != "mqtt-only" || byID[silent.id.String()] != nil {
		t.Fatalf("listed states = %v", byID)
	}

	// A KV store that fails leaves PostgreSQL's state in place.
	if err := mem.Close(); err != nil {
		t.Fatal(err)
	}
	if d := get(dev.id); osOf(d) != "rest-7" {
		t.Fatalf("with the KV store down: %v", d)
	}
	must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/devices", w.viewer, nil)
}
