package devices

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/http/pagination"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/livestate"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

// TestDeviceListEncoding holds the list's own encoding to the generic one:
// every page of devices of many kinds (tags PostgreSQL escapes or orders
// its own way, reported states stored or not, live states newer, older or
// unreadable) is what the generated response would send for the same
// devices as DeviceGet reads them, field by field and in the same order;
// every field but tags byte for byte, tags as the same object.
func TestDeviceListEncoding(t *testing.T) {
	ctx := t.Context()
	pool := pgtest.Pool(t)
	mem := kv.NewMemory()
	t.Cleanup(func() { _ = mem.Close() })
	h := &Devices{Pool: pool, KV: mem}

	org, fleet, release := uuid.New(), uuid.New(), uuid.New()
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{"INSERT INTO orgs (id, name) VALUES ($1, 'o')", []any{org}},
		{"INSERT INTO fleets (id, org_id, name, architecture) VALUES ($1, $2, 'f', 'amd64')", []any{fleet, org}},
		{"INSERT INTO releases (id, org_id, fleet_id, status, services) VALUES ($1, $2, $3, 'draft', '[]')", []any{release, org, fleet}},
	} {
		if _, err := pool.Exec(ctx, q.sql, q.args...); err != nil {
			t.Fatal(err)
		}
	}

	now := time.Now()
	ago := func(d time.Duration) *time.Time { at := now.Add(-d); return &at }
	n := func(v int64) *int64 { return &v }
	state := func(at time.Time, s string) []byte {
		v, err := json.Marshal(livestate.State{ReceivedAt: at, State: json.RawMessage(s)})
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	const reported = `{"seq": 4, "os_version": "os <4> & co", "ip_addresses": ["10.0.0.1"], "not_in_the_schema": {"x": 1}}`
	devices := []struct {
		name      string
		tags      string // jsonb
		reported  string // jsonb; empty: never reported
		seq       *int64
		lastSeen  *time.Time
		connKey   *int64
		connected bool
		pinned    bool
		live      []byte // the KV store's value
	}{
		{name: "plain", tags: `{"zone": "zone-3", "batch": "b3"}`},
		{name: "one tag", tags: `{"site": "lab"}`, lastSeen: ago(time.Minute)},
		{name: "no tags", tags: `{}`, lastSeen: ago(time.Hour)},
		{name: "null tags", tags: `null`},
		{name: "насос ☃ 🐑", tags: `{"ключ": "значение", "emoji 🐑": "☃", "ü": "é"}`},
		{name: "pump <b>\"&\"</b> \u2028\u2029 \x7f \\", tags: `{"quote \" and \\ back": "line\nbreak\ttab\u0001 and \u001f",
			"html": "<script>alert('&')</script>", "js": "\u2028 \u2029", "spaced key ": " spaced : value , "}`},
		{name: "reported, connected", tags: `{"a": "1"}`, reported: reported, seq: n(4), lastSeen: ago(time.Minute),
			connKey: n(7), connected: true, pinned: true},
		{name: "live newer", tags: `{}`, reported: reported, seq: n(4), lastSeen: ago(time.Minute),
			live: state(now.Add(time.Minute), `{"seq": 9, "os_version": "live & <newer>"}`)},
		{name: "live older", tags: `{}`, reported: reported, seq: n(4), lastSeen: ago(time.Minute),
			live: state(now.Add(time.Minute), `{"seq": 2, "os_version": "live older"}`)},
		{name: "live only", tags: `{}`, live: state(now.Add(-30*time.Second), `{"seq": 1, "agent_version": "1.0"}`)},
		{name: "live newer, received before last seen", tags: `{}`, reported: reported, seq: n(4), lastSeen: ago(0),
			live: state(now.Add(-time.Hour), `{"seq": 5}`)},
		{name: "live state unreadable", tags: `{}`, reported: reported, seq: n(4),
			live: state(now, `"not an object"`)},
		{name: "live value unreadable", tags: `{}`, reported: reported, seq: n(4), live: []byte("{")},
		{name: "disconnected", tags: `{"b": "2", "a": "1"}`, lastSeen: ago(time.Minute), connKey: n(3)},
	}
	var ids []uuid.UUID
	for i, d := range devices {
		id := uuid.New()
		ids = append(ids, id)
		var rep any
		var repAt *time.Time
		if d.reported != "" {
			rep, repAt = d.reported, ago(2*time.Minute)
		}
		var pinned *uuid.UUID
		if d.pinned {
			pinned = &release
		}
		if _, err := pool.Exec(ctx, `
			INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key, tags, created_at,
			                     last_seen_at, reported, reported_at, reported_seq, connection_key, connected, pinned_release_id)
			VALUES ($1, $2, $3, $4, 'generic-<amd64>', 'amd64', decode(repeat('00', 32), 'hex'), $5::jsonb, $6,
			        $7, coalesce($8::jsonb, '{}'), $9, $10, $11, $12, $13)`,
			id, org, fleet, d.name, d.tags, now.Add(time.Duration(i-len(devices))*time.Second),
			d.lastSeen, rep, repAt, d.seq, d.connKey, d.connected, pinned); err != nil {
			t.Fatalf("insert %s: %v", d.name, err)
		}
		if d.live != nil {
			if err := mem.Set(ctx, livestate.StateKey(id), d.live, time.Hour); err != nil {
				t.Fatal(err)
			}
		}
	}

	limit := 5
	var cursor *string
	for start := 0; start < len(ids); start += limit {
		page, err := h.list(ctx, org, api.DeviceListParams{Limit: &limit, Cursor: cursor})
		if err != nil {
			t.Fatalf("page at %d: %v", start, err)
		}
		got := httptest.NewRecorder()
		if err := page.VisitDeviceListResponse(got); err != nil {
			t.Fatal(err)
		}

		// The same devices the generic way: each as DeviceGet shows it.
		var items []api.Device
		for _, id := range ids[start:min(start+limit, len(ids))] {
			row, err := db.New(pool).DeviceGet(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			d, err := h.device(ctx, row)
			if err != nil {
				t.Fatal(err)
			}
			items = append(items, d)
		}
		var next *string
		if start+limit < len(ids) {
			last := items[len(items)-1]
			c := pagination.Encode(last.CreatedAt, last.Id)
			next = &c
		}
		want := httptest.NewRecorder()
		if err := (api.DeviceList200JSONResponse{Items: items, NextCursor: next}).VisitDeviceListResponse(want); err != nil {
			t.Fatal(err)
		}

		if got.Code != want.Code || got.Header().Get("Content-Type") != want.Header().Get("Content-Type") {
			t.Fatalf("page at %d: %d %q, want %d %q", start, got.Code, got.Header().Get("Content-Type"), want.Code, want.Header().Get("Content-Type"))
		}
		samePage(t, got.Body.Bytes(), want.Body.Bytes())
		cursor = next
	}
}

// samePage compares two encoded pages as TestDeviceListEncoding says.
func samePage(t *testing.T, got, want []byte) {
	t.Helper()
	if !bytes.HasSuffix(got, []byte("}\n")) {
		t.Errorf("page does not end as encoding/json's Encoder ends it: %q", got[max(0, len(got)-10):])
	}
	gotKeys, gotFields := object(t, got)
	wantKeys, wantFields := object(t, want)
	if !reflect.DeepEqual(gotKeys, wantKeys) || !bytes.Equal(gotFields["next_cursor"], wantFields["next_cursor"]) {
		t.Fatalf("page fields %v %s, want %v %s", gotKeys, gotFields["next_cursor"], wantKeys, wantFields["next_cursor"])
	}
	var gotItems, wantItems []json.RawMessage
	if err := json.Unmarshal(gotFields["items"], &gotItems); err != nil {
		t.Fatalf("items: %v in %s", err, got)
	}
	if err := json.Unmarshal(wantFields["items"], &wantItems); err != nil {
		t.Fatal(err)
	}
	if len(gotItems) != len(wantItems) {
		t.Fatalf("%d items, want %d", len(gotItems), len(wantItems))
	}
	for i := range wantItems {
		gotKeys, gotFields := object(t, gotItems[i])
		wantKeys, wantFields := object(t, wantItems[i])
		if !reflect.DeepEqual(gotKeys, wantKeys) {
			t.Errorf("item %d (%s): fields %v, want %v", i, wantFields["name"], gotKeys, wantKeys)
			continue
		}
		for _, k := range wantKeys {
			if k != "tags" {
				if !bytes.Equal(gotFields[k], wantFields[k]) {
					t.Errorf("item %d (%s): %s = %s, want %s", i, wantFields["name"], k, gotFields[k], wantFields[k])
				}
				continue
			}
			var gotTags, wantTags map[string]string
			if err := json.Unmarshal(gotFields[k], &gotTags); err != nil || gotTags == nil {
				t.Errorf("item %d (%s): tags %s are no object of strings: %v", i, wantFields["name"], gotFields[k], err)
				continue
			}
			if err := json.Unmarshal(wantFields[k], &wantTags); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(gotTags, wantTags) {
				t.Errorf("item %d (%s): tags %s, want %s", i, wantFields["name"], gotFields[k], wantFields[k])
			}
		}
	}
}

// object splits a JSON object into its keys, in order, and their values as
// written.
func object(t *testing.T, b []byte) ([]string, map[string]json.RawMessage) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not an object (%v): %s", err, b)
	}
	var keys []string
	fields := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("%v in %s", err, b)
		}
		k := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("%v in %s", err, b)
		}
		keys = append(keys, k)
		fields[k] = v
	}
	return keys, fields
}

// TestAppendStringAndTime: the list writes strings and times as
// encoding/json does, including what PostgreSQL would never hand it
// (invalid UTF-8) and what encoding/json refuses (years past 9999).
func TestAppendStringAndTime(t *testing.T) {
	for _, s := range []string{"", "plain", `"quoted" \back\ /slash/`, "<b>&amp;</b>", "\x00\x01\b\f\n\r\t\x1f\x7f",
		"\u2028\u2029", "ünïcödé ☃ 🐑", "bad \xff utf-8 \xe2\x82", "\xed\xa0\x80 surrogate", "\ufffd"} {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); !bytes.Equal(got, want) {
			t.Errorf("appendString(%q) = %s, want %s", s, got, want)
		}
	}
	for _, tm := range []time.Time{time.Date(2026, 12, 1, 15, 30, 0, 0, time.UTC),
		time.Date(2026, 12, 1, 15, 30, 0, 123456000, time.FixedZone("x", 5*3600+1800)),
		time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)} {
		want, wantErr := json.Marshal(tm)
		got, err := appendTime(nil, tm)
		if (err != nil) != (wantErr != nil) || (err == nil && !bytes.Equal(got, want)) {
			t.Errorf("appendTime(%v) = %s, %v; want %s, %v", tm, got, err, want, wantErr)
		}
	}
	for _, u := range []uuid.UUID{uuid.Nil, uuid.New(), uuid.Max} {
		want, _ := json.Marshal(u)
		if got := appendUUID(nil, u); !bytes.Equal(got, want) {
			t.Errorf("appendUUID(%v) = %s, want %s", u, got, want)
		}
	}
}
