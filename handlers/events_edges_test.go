package handlers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// held is one webhook request a test receiver holds until the test
// answers it.
type held struct {
	id   string
	seq  int
	sigs map[string]bool // which of the secrets named so far verified
	code chan int
}

// A secret rotated while a delivery is in flight: the attempt already on
// the wire keeps the signatures of its time, and every attempt after the
// rotation is signed with the secrets of its own time: both during an
// overlap, only the new one after a rotation without overlap. So a
// receiver that switched secrets at once refuses the stale attempt (401)
// and the retry, signed with the new secret, gets through: the event is
// still delivered, once accepted, under its original id.
func TestWebhookSecretRotationInFlight(t *testing.T) {
	srv := apptest.Start(t, "--events-allow-private", "--events-retry-schedule=50ms,50ms,50ms,50ms,50ms,50ms")
	w := newWorld(t, srv).withFleet(t)
	dev := w.device.token(t, srv)

	var mu sync.Mutex
	named := map[string]string{} // secret -> its name in the test
	arrived := make(chan held)
	stop := make(chan struct{})
	rcv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		var ev struct {
			Data struct {
				State struct{ Seq int } `json:"state"`
			} `json:"data"`
		}
		_ = json.Unmarshal(body, &ev)
		id, ts, sig := req.Header.Get("webhook-id"), req.Header.Get("webhook-timestamp"), req.Header.Get("webhook-signature")
		h := held{id: id, seq: ev.Data.State.Seq, sigs: map[string]bool{}, code: make(chan int, 1)}
		mu.Lock()
		for s, name := range named {
			if verifySig(s, id, ts, body, sig) {
				h.sigs[name] = true
			}
		}
		mu.Unlock()
		select {
		case arrived <- h:
		case <-stop:
			return
		}
		select {
		case code := <-h.code:
			rw.WriteHeader(code)
		case <-stop:
		}
	}))
	t.Cleanup(rcv.Close)
	t.Cleanup(func() { close(stop) }) // runs first: frees held requests so Close can finish

	next := func(what string) held {
		t.Helper()
		select {
		case h := <-arrived:
			return h
		case <-time.After(testutil.Wait):
			t.Fatalf("%s: no request within %s", what, testutil.Wait)
			return held{}
		}
	}
	wantSigs := func(h held, what string, names ...string) {
		t.Helper()
		if len(h.sigs) != len(names) {
			t.Errorf("%s: signatures of %v verified, want exactly %v", what, h.sigs, names)
		}
		for _, n := range names {
			if !h.sigs[n] {
				t.Errorf("%s: signatures of %v verified, want exactly %v", what, h.sigs, names)
			}
		}
	}

	ep := must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/event-endpoints", w.admin, map[string]any{
		"name": "rotating", "kind": "webhook", "url": rcv.URL, "types": []string{"io.flock.device.state.changed"}})
	id := ep["id"].(string)
	mu.Lock()
	named[ep["secret"].(string)] = "A"
	mu.Unlock()

	// 1. Rotation with an overlap while seq 1 is on the wire.
	reportStates(t, srv, dev, 1, 1)
	first := next("seq 1")
	wantSigs(first, "seq 1 before the rotation", "A")
	rot := must(t, srv, 200, "POST", "/v1/event-endpoints/"+id+"/rotate-secret", w.admin, map[string]any{"overlap_seconds": 3600})
	mu.Lock()
	named[rot["secret"].(string)] = "B"
	mu.Unlock()
	first.code <- http.StatusServiceUnavailable // the receiver was busy: a retry follows
	retry := next("seq 1's retry")
	if retry.id != first.id || retry.seq != 1 {
		t.Fatalf("after the rotation came %s (seq %d), want the retry of %s (seq 1)", retry.id, retry.seq, first.id)
	}
	wantSigs(retry, "seq 1's retry during the overlap", "A", "B")
	retry.code <- http.StatusNoContent

	// 2. Rotation without overlap while seq 2 is on the wire: the receiver
	// switched to the new secret at once and refuses what B signed.
	reportStates(t, srv, dev, 2, 2)
	second := next("seq 2")
	wantSigs(second, "seq 2 before the second rotation", "A", "B")
	rot = must(t, srv, 200, "POST", "/v1/event-endpoints/"+id+"/rotate-secret", w.admin, map[string]any{"overlap_seconds": 0})
	mu.Lock()
	named[rot["secret"].(string)] = "C"
	mu.Unlock()
	second.code <- http.StatusUnauthorized
	retry = next("seq 2's retry")
	if retry.id != second.id || retry.seq != 2 {
		t.Fatalf("after the second rotation came %s (seq %d), want the retry of %s (seq 2)", retry.id, retry.seq, second.id)
	}
	wantSigs(retry, "seq 2's retry after a rotation without overlap", "C")
	retry.code <- http.StatusNoContent

	// The log says what happened: each event refused once, then accepted.
	testutil.Eventually(t, "the log holds 4 attempts", func() error {
		items := must(t, srv, 200, "GET", "/v1/event-endpoints/"+id+"/attempts?limit=10", w.developer, nil)["items"].([]any)
		var codes []string
		for _, it := range items {
			a := it.(map[string]any)
			codes = append(codes, fmt.Sprint(a["status_code"]))
		}
		// Newest first.
		if strings.Join(codes, ",") != "204,401,204,503" {
			return errors.New("attempts (newest first): " + strings.Join(codes, ","))
		}
		return nil
	})
}

// The feed is authorised when it opens and again while it runs, as the
// live streams are: a member removed from the organisation loses an open
// feed (close 1008, access_ended), while another member's goes on.
func TestEventFeedEndsWhenAccessEnds(t *testing.T) {
	srv := apptest.Start(t, "--stream-recheck=100ms")
	w := newWorld(t, srv).withFleet(t)
	victim := srv.Token(t, "victim@example.com")
	dial := func(token string) *websocket.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), testutil.Wait)
		defer cancel()
		c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/v1/orgs/"+w.org+"/cloudevents/ws",
			&websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + token}}})
		if err != nil {
			t.Fatalf("feed: %v", err)
		}
		t.Cleanup(func() { _ = c.CloseNow() })
		return c
	}
	gone, stays := dial(victim), dial(w.viewer)

	must(t, srv, 204, "DELETE", "/v1/orgs/"+w.org+"/members/"+w.victimID, w.owner, nil)
	ctx, cancel := context.WithTimeout(t.Context(), testutil.Wait)
	defer cancel()
	// What was logged before the check (the removal's own audit event)
	// may come first; then the feed closes.
	var err error
	for err == nil {
		_, _, err = gone.Read(ctx)
	}
	if websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Fatalf("the removed member's feed ended with %v, want close 1008", err)
	}
	var ce websocket.CloseError
	if !errors.As(err, &ce) || !strings.HasPrefix(ce.Reason, "access_ended") {
		t.Errorf("close reason %q, want access_ended", ce.Reason)
	}

	// The viewer's feed carries what happens next (this audited change).
	must(t, srv, 200, "PATCH", "/v1/devices/"+w.device.id.String(), w.admin, map[string]any{"name": "after-removal"})
	for {
		_, b, err := stays.Read(ctx)
		if err != nil {
			t.Fatalf("the viewer's feed, waiting for the rename: %v", err)
		}
		var ev struct {
			Type string
			Data struct {
				TargetID string `json:"target_id"`
			}
		}
		_ = json.Unmarshal(b, &ev)
		if ev.Type == "io.flock.audit.recorded" && ev.Data.TargetID == w.device.id.String() {
			break
		}
	}
}

// A receiver that hangs holds sockets, not the gateway's workers: with two
// workers and an endpoint whose receiver never answers (within a timeout
// longer than the test), another endpoint still gets every event, while
// the hanging one holds more attempts than there are workers.
func TestHangingReceiverDoesNotHoldWorkers(t *testing.T) {
	srv := apptest.Start(t, "--events-allow-private", "--events-workers=2", "--events-timeout=5m")
	w := newWorld(t, srv).withFleet(t)

	var mu sync.Mutex
	holding := 0
	stop := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, req *http.Request) {
		mu.Lock()
		holding++
		mu.Unlock()
		select {
		case <-stop:
		case <-req.Context().Done():
		}
		rw.WriteHeader(http.StatusServiceUnavailable)
	}))
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(stop) })
	healthy := newReceiver(t)

	// Audit events are not ordered per device: each is due at once, so the
	// hanging endpoint can take up to --events-per-endpoint attempts.
	types := []string{"io.flock.audit.recorded"}
	must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/event-endpoints", w.admin, map[string]any{"name": "hangs", "kind": "webhook", "url": hang.URL, "types": types})
	ep := must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/event-endpoints", w.admin, map[string]any{"name": "healthy", "kind": "webhook", "url": healthy.srv.URL, "types": types})
	healthy.mu.Lock()
	healthy.secrets = []string{ep["secret"].(string)}
	healthy.mu.Unlock()

	for i := range 6 {
		must(t, srv, 200, "PATCH", "/v1/devices/"+w.device.id.String(), w.admin, map[string]any{"name": fmt.Sprintf("rename-%d", i)})
	}
	testutil.Eventually(t, "6 audit events at the healthy endpoint while the other hangs on more than 2", func() error {
		n := 0
		for _, d := range healthy.snapshot() {
			if d.typ == "io.flock.audit.recorded" {
				n++
			}
		}
		mu.Lock()
		h := holding
		mu.Unlock()
		if n < 6 || h <= 2 {
			return fmt.Errorf("healthy endpoint has %d audit events, the hanging receiver holds %d requests", n, h)
		}
		return nil
	})
}

// Releases changing state reach the organisation's endpoints as
// io.flock.release.* events, in order per release: created (draft or
// final), then finalized or failed; a release registered final is created
// and finalized at once.
func TestReleaseEvents(t *testing.T) {
	srv := apptest.Start(t, "--events-allow-private")
	w := newWorld(t, srv).withFleet(t)
	rcv := newReceiver(t)
	ep := must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/event-endpoints", w.admin, map[string]any{"name": "releases", "kind": "webhook",
		"url": rcv.srv.URL, "types": []string{"io.flock.release.created", "io.flock.release.finalized", "io.flock.release.failed"}})
	rcv.mu.Lock()
	rcv.secrets = []string{ep["secret"].(string)}
	rcv.mu.Unlock()

	path := "/v1/fleets/" + w.fleet + "/releases"
	drafted := must(t, srv, 201, "POST", path, w.developer, w.releaseBody(w.fleet, "draft"))["id"].(string)
	final := must(t, srv, 201, "POST", path, w.developer, w.releaseBody(w.fleet, "final"))["id"].(string)
	failed := must(t, srv, 201, "POST", path, w.developer, w.releaseBody(w.fleet, "draft"))["id"].(string)
	must(t, srv, 200, "PATCH", "/v1/releases/"+drafted, w.developer, map[string]any{"status": "final"})
	// A change that is not a status change announces nothing: had it, its
	// event would come between this release's two (they are in order).
	must(t, srv, 200, "PATCH", "/v1/releases/"+failed, w.developer, map[string]any{"tags": map[string]string{"env": "prod"}})
	must(t, srv, 200, "PATCH", "/v1/releases/"+failed, w.developer, map[string]any{"status": "failed"})

	want := map[string][]string{
		drafted: {"io.flock.release.created", "io.flock.release.finalized"},
		final:   {"io.flock.release.created", "io.flock.release.finalized"},
		failed:  {"io.flock.release.created", "io.flock.release.failed"},
	}
	testutil.Eventually(t, "each release's events, in order", func() error {
		got := map[string][]string{}
		for _, d := range rcv.snapshot() {
			got[d.subject] = append(got[d.subject], d.typ)
		}
		for rel, types := range want {
			if !slices.Equal(got[rel], types) {
				return fmt.Errorf("release %s: %v, want %v (all: %v)", rel, got[rel], types, got)
			}
		}
		if len(got) != len(want) {
			return fmt.Errorf("events of %d releases, want %d: %v", len(got), len(want), got)
		}
		return nil
	})
}

// A delivery whose retries are spent is given up, and the device's later
// events, which waited behind it, go on in order.
func TestGivenUpDeliveryLetsTheNextGo(t *testing.T) {
	srv := apptest.Start(t, "--events-allow-private", "--events-retry-schedule=50ms")
	w := newWorld(t, srv).withFleet(t)
	dev := w.device.token(t, srv)
	rcv := newReceiver(t)
	ep := must(t, srv, 201, "POST", "/v1/orgs/"+w.org+"/event-endpoints", w.admin, map[string]any{
		"name": "ops", "kind": "webhook", "url": rcv.srv.URL, "types": []string{"io.flock.device.state.changed"}})
	id := ep["id"].(string)
	rcv.mu.Lock()
	rcv.secrets = []string{ep["secret"].(string)}
	rcv.fail = func(d delivered) bool { return d.seq == 1 }
	rcv.mu.Unlock()

	reportStates(t, srv, dev, 1, 3)
	testutil.Eventually(t, "seqs 2 and 3 after seq 1 was given up", func() error {
		var seqs []int
		for _, d := range rcv.snapshot() {
			seqs = append(seqs, d.seq)
		}
		if !slices.Equal(seqs, []int{2, 3}) {
			return fmt.Errorf("delivered seqs %v", seqs)
		}
		return nil
	})
	// Seq 1: the first attempt and its one retry, both refused, in the log.
	testutil.Eventually(t, "the log: 2 refusals, 2 successes", func() error {
		items := must(t, srv, 200, "GET", "/v1/event-endpoints/"+id+"/attempts?limit=10", w.developer, nil)["items"].([]any)
		var refused, ok int
		for _, it := range items {
			if it.(map[string]any)["succeeded"] == true {
				ok++
			} else {
				refused++
			}
		}
		if refused != 2 || ok != 2 {
			return fmt.Errorf("%d refused, %d succeeded", refused, ok)
		}
		return nil
	})
}
