package e2e

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
	"github.com/flock-io/flock-api/internal/webhook"
)

// TestEventsGatewaySurvivesKill9 runs the events-gateway as its own
// process beside the api, with Kafka served by `flock-api dev-kafka`, and
// kills it with -9 in the middle of delivering a device's 60 state events.
// Two new replicas take over: every event reaches the webhook (at least
// once), the first arrival of each keeps the device's order, and the only
// repeats are attempts the killed replica had in flight.
func TestEventsGatewaySurvivesKill9(t *testing.T) {
	bin := build(t)
	dbURL := pgtest.EmptyURL(t)
	if out, err := exec.Command(bin, "migrate", "up", "--database-url", dbURL).CombinedOutput(); err != nil {
		t.Fatalf("migrate up: %v\n%s", err, out)
	}
	issuer, mint := externalIssuer(t, dbURL)
	kafka := startProcess(t, "dev-kafka", bin, []string{"dev-kafka", "--listen", "127.0.0.1:0", "--log-format=json"}, nil)
	brokers := kafka.waitStdout(t)
	const publicURL = "http://flock-events.test"
	shared := []string{
		"FLOCK_DATABASE_URL=" + dbURL,
		"FLOCK_PUBLIC_URL=" + publicURL,
		"FLOCK_OIDC_ISSUER=" + issuer,
		"FLOCK_OIDC_AUDIENCE=flock-e2e",
		"FLOCK_KAFKA_BROKERS=" + brokers,
		"FLOCK_LOG_FORMAT=json",
		"FLOCK_EVENTS_ENCRYPTION_KEY=ZmxvY2stZTJlLWV2ZW50cy1rZXktMzItYnl0ZXMhISE=",
		"FLOCK_EVENTS_ALLOW_PRIVATE=true",
		"FLOCK_EVENTS_RETRY_SCHEDULE=100ms,200ms,400ms",
	}
	api := startProcess(t, "api", bin, []string{"--target=api", "--http-addr=127.0.0.1:0", "--data-dir=" + t.TempDir()}, shared)
	apiBase := "http://" + api.waitLog(t, "http server listening", "addr")
	waitReady(t, api, apiBase)
	gateway := func(name string) *process {
		p := startProcess(t, name, bin, []string{"--target=events-gateway", "--http-addr=127.0.0.1:0", "--data-dir=" + t.TempDir()}, shared)
		waitReady(t, p, "http://"+p.waitLog(t, "http server listening", "addr"))
		return p
	}
	first := gateway("gateway-1")

	// The receiver verifies each signature and answers slowly enough that
	// the kill lands mid-stream.
	var mu sync.Mutex
	var secret string
	var arrivals []int // state seqs in arrival order
	var bad []string
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		time.Sleep(20 * time.Millisecond) // a receiver's own work, not a wait for a condition
		var ev struct {
			Data struct{ State struct{ Seq int } }
		}
		_ = json.Unmarshal(body, &ev)
		mu.Lock()
		defer mu.Unlock()
		if err := webhook.Verify(secret, r.Header, body, time.Now(), time.Minute); err != nil {
			bad = append(bad, err.Error())
		}
		arrivals = append(arrivals, ev.Data.State.Seq)
		w.WriteHeader(http.StatusOK)
	}))
	defer rcv.Close()

	token := mint("ops@example.com")
	call := func(method, path, tok string, body any) map[string]any {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest(method, apiBase+path, bytes.NewReader(b))
		req.Header.Set("Content-Type", "application/json")
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode/100 != 2 {
			t.Fatalf("%s %s = %d: %v", method, path, resp.StatusCode, out)
		}
		return out
	}
	org := call("POST", "/v1/orgs", token, map[string]any{"name": "Events"})["id"].(string)
	fleet := call("POST", "/v1/orgs/"+org+"/fleets", token, map[string]any{"name": "f", "architecture": "amd64"})["id"].(string)
	key := call("POST", "/v1/fleets/"+fleet+"/provisioning-keys", token, map[string]any{"name": "k"})["secret"].(string)
	ep := call("POST", "/v1/orgs/"+org+"/event-endpoints", token, map[string]any{"name": "hook", "kind": "webhook", "url": rcv.URL,
		"types": []string{"io.flock.device.state.changed"}})
	mu.Lock()
	secret = ep["secret"].(string)
	mu.Unlock()

	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	dev := uuid.New()
	call("POST", "/device/v1/register", "", map[string]any{"provisioning_key": key, "uuid": dev.String(),
		"public_key": base64.RawURLEncoding.EncodeToString(pub), "name": "d1", "device_type": "generic-amd64"})
	assertion, err := devicetoken.SignAssertion(priv, dev, app.TokenEndpoint(publicURL), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	devToken := call("POST", "/device/v1/token", "", map[string]any{"assertion": assertion})["access_token"].(string)
	const n = 60
	for seq := 1; seq <= n; seq++ {
		call("PATCH", "/device/v1/state", devToken, map[string]any{"seq": seq})
	}

	arrived := func() []int {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(arrivals)
	}
	testutil.Eventually(t, "a third of the events delivered", testutil.Until(func() bool { return len(arrived()) >= n/3 }))
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-first.exited
	atKill := len(arrived())
	if atKill >= n {
		t.Fatalf("all %d events arrived before the kill; the test proves nothing", n)
	}
	gateway("gateway-2")
	gateway("gateway-3")
	testutil.EventuallyWithin(t, 2*time.Minute, "every event delivered after the kill", func() error {
		seen := map[int]bool{}
		for _, s := range arrived() {
			seen[s] = true
		}
		if len(seen) < n {
			return fmt.Errorf("%d of %d distinct events arrived (%d before the kill)", len(seen), n, atKill)
		}
		return nil
	})
	got := arrived()
	var order []int
	seen := map[int]bool{}
	for _, s := range got {
		if !seen[s] {
			seen[s] = true
			order = append(order, s)
		}
	}
	for i, s := range order {
		if s != i+1 {
			t.Fatalf("first arrivals out of the device's order at %d: %v", i, order)
		}
	}
	// Repeats come only from attempts the killed replica had in flight
	// (at most the per-endpoint cap, 8) — the new replicas never make one
	// attempt twice.
	if dup := len(got) - n; dup > 8 {
		t.Errorf("%d repeated deliveries, want at most the 8 in flight at the kill: %v", dup, got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(bad) > 0 {
		t.Errorf("signatures that did not verify: %v", bad)
	}
}
