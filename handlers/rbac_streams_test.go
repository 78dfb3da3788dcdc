package handlers_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// openStream opens a Server-Sent Events or WebSocket stream and returns its
// status once answered (200 or 101 when it opened), closing it then; a
// refusal comes back with its problem document.
func openStream(t *testing.T, srv *apptest.Server, kind, path, token string) (int, http.Header, map[string]any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	var resp *http.Response
	switch kind {
	case "sse":
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = h
		req.Header.Set("Accept", "text/event-stream")
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		if resp.StatusCode == http.StatusOK {
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
				t.Errorf("stream %s: Content-Type %q", path, ct)
			}
			resp.Body.Close()
			return resp.StatusCode, resp.Header, nil
		}
	case "websocket":
		conn, r, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+path, &websocket.DialOptions{HTTPHeader: h})
		if err == nil {
			conn.Close(websocket.StatusNormalClosure, "")
			return r.StatusCode, r.Header, nil
		}
		if r == nil {
			t.Fatalf("dial %s: %v", path, err)
		}
		resp = r
	default:
		t.Fatalf("stream kind %q", kind)
	}
	defer resp.Body.Close()
	var out map[string]any
	b, _ := io.ReadAll(resp.Body)
	if len(b) > 0 {
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%s %s: %d with a body that is not JSON: %q", kind, path, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, resp.Header, out
}

// commandForReads is a command to the world's device, made once; the device
// reports an agent that takes it first.
func (w *world) commandForReads() string {
	if w.readCommand == "" {
		w.reportAgent("1.2.0")
		w.readCommand = must(w.t, w.srv, 201, "POST", "/v1/devices/"+w.device.id.String()+"/commands", w.owner,
			map[string]any{"type": "identify"})["id"].(string)
	}
	return w.readCommand
}

// metricForReads stores a sample of the world's device, once, in the
// telemetry store the app runs without ClickHouse, and returns its name.
func (w *world) metricForReads() string {
	const name = "cpu.temperature"
	if !w.readMetric {
		_, err := w.srv.Pool(w.t).Exec(context.Background(),
			`INSERT INTO telemetry_samples (device_id, org_id, ts, name, value) VALUES ($1, $2, now() - interval '1 minute', $3, 42)`,
			w.device.id, w.org, name)
		if err != nil {
			w.t.Fatal(err)
		}
		w.readMetric = true
	}
	return name
}

// reportAgent has the world's device report a state naming its agent version.
func (w *world) reportAgent(version string) {
	w.reportSeq++
	must(w.t, w.srv, 204, "PATCH", "/device/v1/state", w.device.token(w.t, w.srv),
		map[string]any{"seq": w.reportSeq, "agent_version": version})
}

func init() {
	dev := func(w *world) string { return "/v1/devices/" + w.device.id.String() }
	get := func(path func(w *world) string) func(w *world) (string, string, any) {
		return func(w *world) (string, string, any) { return "GET", path(w), nil }
	}
	for op, f := range map[string]fixture{
		// A fixed range: the default one ends "now", which moves between
		// the GET and the HEAD that TestHeadMirrorsGet compares.
		"device-telemetry:get": {req: get(func(w *world) string {
			until := time.Now().UTC().Truncate(time.Second).Add(time.Minute)
			return dev(w) + "/telemetry?metric=" + w.metricForReads() + "&since=" +
				until.Add(-time.Hour).Format(time.RFC3339) + "&until=" + until.Format(time.RFC3339)
		})},
		"device-metric:list":       {req: get(func(w *world) string { return dev(w) + "/metrics" })},
		"device-log:list":          {req: get(func(w *world) string { return dev(w) + "/logs" })},
		"device-update-event:list": {req: get(func(w *world) string { return dev(w) + "/update-events" })},
		"fleet-summary:get":        {req: get(func(w *world) string { return "/v1/fleets/" + w.fleet + "/summary" })},
		"org-summary:get":          {req: get(func(w *world) string { return "/v1/orgs/" + w.org + "/summary" })},

		"org-events:stream":             {stream: "sse", req: get(func(w *world) string { return "/v1/orgs/" + w.org + "/events" })},
		"org-events:websocket":          {stream: "websocket", req: get(func(w *world) string { return "/v1/orgs/" + w.org + "/events/ws" })},
		"fleet-events:stream":           {stream: "sse", req: get(func(w *world) string { return "/v1/fleets/" + w.fleet + "/events" })},
		"fleet-events:websocket":        {stream: "websocket", req: get(func(w *world) string { return "/v1/fleets/" + w.fleet + "/events/ws" })},
		"device-group-events:stream":    {stream: "sse", req: get(func(w *world) string { return "/v1/device-groups/" + w.groupForReads() + "/events" })},
		"device-group-events:websocket": {stream: "websocket", req: get(func(w *world) string { return "/v1/device-groups/" + w.groupForReads() + "/events/ws" })},
		"device-events:stream":          {stream: "sse", req: get(func(w *world) string { return dev(w) + "/events" })},
		"device-events:websocket":       {stream: "websocket", req: get(func(w *world) string { return dev(w) + "/events/ws" })},
		"rollout-events:stream":         {stream: "sse", req: get(func(w *world) string { return "/v1/rollouts/" + w.rolloutForReads() + "/events" })},
		"rollout-events:websocket":      {stream: "websocket", req: get(func(w *world) string { return "/v1/rollouts/" + w.rolloutForReads() + "/events/ws" })},
		"device-log:stream":             {stream: "sse", req: get(func(w *world) string { return dev(w) + "/logs/stream" })},
		"device-log:websocket":          {stream: "websocket", req: get(func(w *world) string { return dev(w) + "/logs/ws" })},

		"device-command:create": {req: func(w *world) (string, string, any) {
			w.reportAgent("1.2.0")
			return "POST", dev(w) + "/commands", map[string]any{"type": "reboot"}
		}},
		"device-command:list": {req: get(func(w *world) string { return dev(w) + "/commands" })},
		"command:get":         {req: get(func(w *world) string { return "/v1/commands/" + w.commandForReads() })},
	} {
		fixtures[op] = f
	}
}
