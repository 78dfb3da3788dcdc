package handlers_test

import (
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/coder/websocket"
)

// A stream is authorised when it opens and again while it runs: a member
// removed from the organisation, or an API key deleted, loses its open
// streams (an error event access_ended, then the end; close 1008 on a
// WebSocket), while everyone else's go on.
func TestStreamEndsWhenAccessEnds(t *testing.T) {
	e := startStreamEnvWith(t, "--stream-recheck=100ms")
	w := e.w
	dev := w.device.id.String()
	victim := e.srv.Token(t, "victim@example.com")
	path := "/v1/fleets/" + w.fleet + "/events"

	gone, status, out := openSSE(t, e.srv, path, victim, nil)
	if status != http.StatusOK {
		t.Fatalf("victim's stream: %d %v", status, out)
	}
	stays, status, out := openSSE(t, e.srv, path, w.viewer, nil)
	if status != http.StatusOK {
		t.Fatalf("viewer's stream: %d %v", status, out)
	}
	key := openWS(t, e.srv, path+"/ws", w.ownerKey)

	// Both open streams work before anything is revoked.
	e.publishState(t, dev, 1)
	for _, r := range []eventReader{gone, stays, key} {
		expectSeqs(t, r, 1)
	}

	must(t, e.srv, 204, "DELETE", "/v1/orgs/"+w.org+"/members/"+w.victimID, w.owner, nil)
	must(t, e.srv, 204, "DELETE", "/v1/orgs/"+w.org+"/api-keys/"+w.ownerKeyID, w.owner, nil)

	var last streamEvent
	for {
		ev, err := gone.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("victim's stream: %v", err)
		}
		last = ev
	}
	if last.Type != "error" || last.data()["code"] != "access_ended" || last.ID != "" {
		t.Fatalf("victim's last event %q %v (id %q), want an error access_ended without id", last.Type, last.Doc, last.ID)
	}
	last = streamEvent{}
	for {
		ev, err := key.next()
		if err != nil {
			if websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
				t.Fatalf("key's stream ended with %v, want close 1008", err)
			}
			break
		}
		last = ev
	}
	if last.Type != "error" || last.data()["code"] != "access_ended" {
		t.Fatalf("key's last event %v, want an error access_ended", last.Doc)
	}

	// The viewer, still a member, still gets what comes next.
	e.publishState(t, dev, 2)
	expectSeqs(t, stays, 2)
}
