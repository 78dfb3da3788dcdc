package handlers_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// receiver is a customer's webhook receiver: it checks every delivery's
// Standard Webhooks signature with its own implementation of the
// specification (against each secret it was given), and records what
// arrived. fail, when set, decides per event whether to answer 500.
type receiver struct {
	t   *testing.T
	srv *httptest.Server

	mu      sync.Mutex
	secrets []string
	got     []delivered
	bad     []string
	fail    func(d delivered) bool
}

type delivered struct {
	id, typ string
	subject string
	seq     int // the reported state's seq, for state events
	sigs    int // v1 signatures that verified
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{t: t}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

// verify is the specification: HMAC-SHA256 over "id.timestamp.body" with
// the base64-decoded key after "whsec_", base64 in a "v1," entry of the
// space-separated webhook-signature header.
func verifySig(secret, id, ts string, body []byte, header string) bool {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id + "." + ts + "."))
	m.Write(body)
	want := base64.StdEncoding.EncodeToString(m.Sum(nil))
	for _, s := range strings.Fields(header) {
		if v, ok := strings.CutPrefix(s, "v1,"); ok && hmac.Equal([]byte(v), []byte(want)) {
			return true
		}
	}
	return false
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	id, ts, sig := req.Header.Get("webhook-id"), req.Header.Get("webhook-timestamp"), req.Header.Get("webhook-signature")
	var ev struct {
		ID, Type, SpecVersion, Subject string
		Data                           struct {
			State struct{ Seq int } `json:"state"`
		}
	}
	_ = json.Unmarshal(body, &ev)
	r.mu.Lock()
	defer r.mu.Unlock()
	d := delivered{id: id, typ: ev.Type, subject: ev.Subject, seq: ev.Data.State.Seq}
	when, err := strconv.ParseInt(ts, 10, 64)
	switch {
	case err != nil || time.Since(time.Unix(when, 0)).Abs() > 5*time.Minute:
		r.bad = append(r.bad, "timestamp "+ts)
	case ev.ID != id || ev.SpecVersion != "1.0" || req.Header.Get("Content-Type") != "application/cloudevents+json":
		r.bad = append(r.bad, fmt.Sprintf("not a structured CloudEvent with id %s: %s", id, body))
	}
	for _, s := range r.secrets {
		if verifySig(s, id, ts, body, sig) {
			d.sigs++
		}
	}
	if d.sigs == 0 {
		r.bad = append(r.bad, "no signature verified for "+id)
	}
	if r.fail != nil && r.fail(d) {
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, "receiver says no")
		return
	}
	r.got = append(r.got, d)
	w.WriteHeader(http.StatusNoContent)
}

func (r *receiver) snapshot() []delivered {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.bad) > 0 {
		r.t.Errorf("receiver refused deliveries: %v", r.bad)
		r.bad = nil
	}
	return slices.Clone(r.got)
}

// reportStates reports states with seqs from..to over HTTP, which the API
// puts on flock.device.state.v1: each becomes an io.flock.device.state.changed.
func reportStates(t *testing.T, srv *apptest.Server, token string, from, to int) {
	t.Helper()
	for seq := from; seq <= to; seq++ {
		must(t, srv, 204, "PATCH", "/device/v1/state", token, map[string]any{"seq": seq, "os_version": "os " + strconv.Itoa(seq)})
	}
}

// TestWebhooks drives the event pipeline in one process (--target=all:
// the API publishes the device's reports to Kafka, the events-gateway
// stores them as events and delivers them): signatures verified by the
// receiver's own implementation, order per device through retries, the
// delivery log, replay, a secret rotation, disabling after a failure
// streak with the organisation told, the WebSocket feed and its cursor, a
// test send, and the refusals of bad endpoints.
func TestWebhooks(t *testing.T) {
	srv := apptest.Start(t, "--events-allow-private", "--events-retry-schedule=50ms,100ms,100ms,100ms", "--events-disable-after=3s")
	w := newWorld(t, srv).withFleet(t)
	dev := w.device.token(t, srv)
	rcv := newReceiver(t)

	ep := must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/event-endpoints", w.admin, map[string]any{
		"name": "ops", "kind": "webhook", "url": rcv.srv.URL + "/hook", "types": []string{"io.flock.device.state.changed"}})
	secret, _ := ep["secret"].(string)
	if !strings.HasPrefix(secret, "whsec_") {
		t.Fatalf("endpoint created without a whsec_ secret: %v", ep)
	}
	id := ep["id"].(string)
	if got := must(t, srv, 200, "GET", "/v1/event-endpoints/"+id, w.developer, nil); got["secret"] != nil {
		t.Errorf("the secret is shown again: %v", got)
	}
	rcv.mu.Lock()
	rcv.secrets = []string{secret}
	// Seq 5 fails twice: its retries must hold 6 and later back.
	fails := map[int]int{}
	rcv.fail = func(d delivered) bool {
		if d.seq == 5 && fails[5] < 2 {
			fails[5]++
			return true
		}
		return false
	}
	rcv.mu.Unlock()

	t0 := time.Now()
	reportStates(t, srv, dev, 1, 12)
	testutil.Eventually(t, "12 state events delivered in order", func() error {
		if n := len(rcv.snapshot()); n < 12 {
			return fmt.Errorf("%d delivered; the log: %v", n, must(t, srv, 200, "GET", "/v1/event-endpoints/"+id+"/attempts?limit=20", w.developer, nil)["items"])
		}
		return nil
	})
	got := rcv.snapshot()
	for i, d := range got[:12] {
		if d.seq != i+1 || d.typ != "io.flock.device.state.changed" {
			t.Fatalf("delivery %d: %+v, want state seq %d in order: %+v", i, d, i+1, got)
		}
	}

	// An attempt is logged after its receiver answered: wait for the log.
	testutil.Eventually(t, "the delivery log of 14 attempts", func() error {
		log := must(t, srv, 200, "GET", "/v1/event-endpoints/"+id+"/attempts?limit=500", w.developer, nil)["items"].([]any)
		var failed, succeeded int
		for _, it := range log {
			a := it.(map[string]any)
			if a["succeeded"] == true {
				succeeded++
			} else if a["status_code"].(float64) == 500 && a["response"] == "receiver says no" {
				failed++
			}
		}
		if failed != 2 || succeeded != 12 {
			return fmt.Errorf("%d failed with 500 and the response's bytes, %d succeeded; want 2 and 12", failed, succeeded)
		}
		return nil
	})

	// Replay everything since t0: the same ids again.
	rep := must(t, srv, 202, "POST", "/v1/event-endpoints/"+id+"/replay", w.admin, map[string]any{"since": t0.Add(-time.Second).UTC().Format(time.RFC3339Nano)})
	if rep["queued"].(float64) != 12 {
		t.Errorf("replay queued %v, want 12", rep["queued"])
	}
	testutil.Eventually(t, "the replay delivered", testutil.Until(func() bool { return len(rcv.snapshot()) >= 24 }))
	got = rcv.snapshot()
	for i := range 12 {
		if got[12+i].id != got[i].id {
			t.Fatalf("replayed delivery %d has id %s, want the original %s", i, got[12+i].id, got[i].id)
		}
	}

	// Rotation: during the overlap both secrets sign.
	rot := must(t, srv, 200, "POST", "/v1/event-endpoints/"+id+"/rotate-secret", w.admin, map[string]any{"overlap_seconds": 3600})
	newSecret := rot["secret"].(string)
	if newSecret == secret || rot["previous_expires_at"] == nil {
		t.Fatalf("rotation: %v", rot)
	}
	rcv.mu.Lock()
	rcv.secrets = []string{secret, newSecret}
	rcv.mu.Unlock()
	reportStates(t, srv, dev, 13, 13)
	testutil.Eventually(t, "a delivery after the rotation", testutil.Until(func() bool { return len(rcv.snapshot()) >= 25 }))
	if d := rcv.snapshot()[24]; d.sigs != 2 {
		t.Errorf("after the rotation %d signatures verified, want 2 (old and new secret)", d.sigs)
	}

	// A test send answers with the attempt.
	ts := must(t, srv, 200, "POST", "/v1/event-endpoints/"+id+"/test", w.admin, nil)
	if ts["succeeded"] != true || ts["event_type"] != "io.flock.event-endpoint.test" || ts["status_code"].(float64) != 204 {
		t.Errorf("test send: %v", ts)
	}

	// The WebSocket feed: from the start, then resumed after a cursor.
	feed := func(after string) []map[string]any {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		path := "/v1/orgs/" + w.org + "/cloudevents/ws?types=io.flock.device.state.changed&after=" + after
		c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+path,
			&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + w.viewer}}})
		if err != nil {
			t.Fatalf("feed: %v", err)
		}
		defer c.CloseNow()
		var out []map[string]any
		for len(out) < 3 {
			_, b, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("feed read: %v", err)
			}
			var ev map[string]any
			_ = json.Unmarshal(b, &ev)
			out = append(out, ev)
		}
		return out
	}
	first := feed("0")
	if first[0]["specversion"] != "1.0" || first[0]["sequence"] == nil || first[0]["type"] != "io.flock.device.state.changed" {
		t.Fatalf("feed event: %v", first[0])
	}
	next := feed(first[1]["sequence"].(string))
	if next[0]["id"] != first[2]["id"] {
		t.Errorf("resuming after %v gave %v, want %v", first[1]["sequence"], next[0]["id"], first[2]["id"])
	}

	// A second endpoint takes every type; the first starts failing and is
	// disabled after its streak, which the organisation hears of.
	all := newReceiver(t)
	ep2 := must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/event-endpoints", w.admin, map[string]any{"name": "all", "kind": "webhook", "url": all.srv.URL})
	all.mu.Lock()
	all.secrets = []string{ep2["secret"].(string)}
	all.mu.Unlock()
	// An audited change reaches it as io.flock.audit.recorded.
	must(t, srv, 200, "PATCH", "/v1/devices/"+w.device.id.String(), w.admin, map[string]any{"name": "renamed"})
	testutil.Eventually(t, "the audited change delivered", testutil.Until(func() bool {
		return slices.ContainsFunc(all.snapshot(), func(d delivered) bool { return d.typ == "io.flock.audit.recorded" })
	}))
	rcv.mu.Lock()
	rcv.fail = func(delivered) bool { return true }
	rcv.mu.Unlock()
	stateSeq := 100
	testutil.Eventually(t, "the failing endpoint disabled", func() error {
		stateSeq++
		reportStates(t, srv, dev, stateSeq, stateSeq) // a new event keeps it failing
		e := must(t, srv, 200, "GET", "/v1/event-endpoints/"+id, w.developer, nil)
		if e["enabled"] != false || e["disabled_reason"] == nil {
			return fmt.Errorf("endpoint %v; the last attempts %v", e, must(t, srv, 200, "GET", "/v1/event-endpoints/"+id+"/attempts?limit=3", w.developer, nil)["items"])
		}
		return nil
	})
	testutil.Eventually(t, "the organisation told", testutil.Until(func() bool {
		return slices.ContainsFunc(all.snapshot(), func(d delivered) bool { return d.typ == "io.flock.event-endpoint.disabled" })
	}))
}

// TestEventEndpointRefusals: bad endpoints are refused with the rule that
// failed, private addresses included unless the operator allows them.
func TestEventEndpointRefusals(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv).withFleet(t)
	for _, c := range []struct {
		name string
		body map[string]any
		want string
	}{
		{"not http", map[string]any{"name": "x", "kind": "webhook", "url": "ftp://example.com/hook"}, "/url"},
		{"loopback", map[string]any{"name": "x", "kind": "webhook", "url": "http://127.0.0.1:9/hook"}, "/url"},
		{"cloud metadata", map[string]any{"name": "x", "kind": "webhook", "url": "http://169.254.169.254/latest"}, "/url"},
		{"private", map[string]any{"name": "x", "kind": "webhook", "url": "https://10.1.2.3/hook"}, "/url"},
		{"unresolvable", map[string]any{"name": "x", "kind": "webhook", "url": "https://nothing.invalid/hook"}, "/url"},
		{"unknown type", map[string]any{"name": "x", "kind": "webhook", "url": "https://example.com/hook", "types": []string{"io.flock.nope"}}, "/types"},
		{"webhook without url", map[string]any{"name": "x", "kind": "webhook"}, "/url"},
		{"kafka without brokers", map[string]any{"name": "x", "kind": "kafka", "kafka": map[string]any{"brokers": []string{}, "topic": "t"}}, ""},
		{"kafka broker on loopback", map[string]any{"name": "x", "kind": "kafka", "kafka": map[string]any{"brokers": []string{"127.0.0.1:9092"}, "topic": "t"}}, "/kafka/brokers"},
		{"kafka bad mechanism user", map[string]any{"name": "x", "kind": "kafka", "kafka": map[string]any{"brokers": []string{"k:9092"}, "topic": "t", "sasl_mechanism": "PLAIN"}}, "/kafka"},
	} {
		t.Run(c.name, func(t *testing.T) {
			status, _, out := call(t, srv, "POST", "/v1/orgs/"+w.org+"/event-endpoints", w.admin, c.body)
			if status != 400 && status != 422 {
				t.Fatalf("= %d %v, want a refusal", status, out)
			}
			if c.want != "" && !strings.Contains(fmt.Sprint(out["errors"]), c.want) {
				t.Errorf("refusal %v does not name %s", out, c.want)
			}
		})
	}
	if status, _, _ := call(t, srv, "POST", "/v1/orgs/"+w.org+"/event-endpoints", w.developer,
		map[string]any{"name": "x", "kind": "webhook", "url": "https://example.com/hook"}); status != 403 {
		t.Errorf("a developer creating an endpoint = %d, want 403", status)
	}

}

// TestKafkaForwarding: an endpoint forwarding to the organisation's own
// Kafka cluster (an embedded kfake with SASL SCRAM-SHA-256) gets each event
// in CloudEvents binary mode: the data as the value, ce_* headers, the
// device id as the key, in the device's order; its password is never
// shown.
func TestKafkaForwarding(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "acme", "s3cret"),
		kfake.SeedTopics(1, "flock-events"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	srv := apptest.Start(t, "--events-allow-private")
	w := newWorld(t, srv).withFleet(t)
	dev := w.device.token(t, srv)
	ep := must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/event-endpoints", w.admin, map[string]any{"name": "our kafka", "kind": "kafka",
		"types": []string{"io.flock.device.state.changed"},
		"kafka": map[string]any{"brokers": cluster.ListenAddrs(), "topic": "flock-events", "sasl_mechanism": "SCRAM-SHA-256", "username": "acme", "password": "s3cret"}})
	if k := ep["kafka"].(map[string]any); k["password"] != nil || k["username"] != "acme" || ep["secret"] != nil {
		t.Errorf("kafka endpoint shows %v", ep)
	}
	reportStates(t, srv, dev, 1, 3)

	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.ConsumeTopics("flock-events"),
		kgo.SASL(scram.Auth{User: "acme", Pass: "s3cret"}.AsSha256Mechanism()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	testutil.Eventually(t, "three records on the customer's topic", func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) { recs = append(recs, r) })
		if len(recs) < 3 {
			return fmt.Errorf("%d records", len(recs))
		}
		return nil
	})
	for i, r := range recs {
		h := map[string]string{}
		for _, x := range r.Headers {
			h[x.Key] = string(x.Value)
		}
		var data struct {
			DeviceID string `json:"device_id"`
			State    struct{ Seq int }
		}
		_ = json.Unmarshal(r.Value, &data)
		if h["ce_specversion"] != "1.0" || h["ce_type"] != "io.flock.device.state.changed" || h["ce_id"] == "" ||
			h["ce_source"] != "/orgs/"+w.org+"/fleets/"+w.fleet || h["ce_subject"] != w.device.id.String() ||
			string(r.Key) != w.device.id.String() || data.State.Seq != i+1 || data.DeviceID != w.device.id.String() {
			t.Errorf("record %d: key %s headers %v value %s", i, r.Key, h, r.Value)
		}
	}
}
