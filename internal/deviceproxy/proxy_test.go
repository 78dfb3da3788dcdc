package deviceproxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/promtest"
)

// TestStreaming shows that bodies stream both ways: the device reads the
// first megabyte of a request the client has not finished sending, and the
// client reads the first chunk of a response the device has not finished
// writing. A proxy that buffered either would stall until the bound.
func TestStreaming(t *testing.T) {
	const firstPart = 1 << 20
	tests := []struct {
		method   string
		bodySize int
	}{
		{http.MethodGet, 0},
		{http.MethodPost, 5 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.method, func(t *testing.T) {
			h := newHarness(t)
			deviceGotFirst := make(chan struct{})
			clientGotFirst := make(chan struct{})
			const tail = 3 << 20
			port := startDevice(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				sum := sha256.New()
				if tc.bodySize > 0 {
					if _, err := io.CopyN(sum, r.Body, firstPart); err != nil {
						http.Error(w, err.Error(), http.StatusBadRequest)
						return
					}
					close(deviceGotFirst)
				}
				n, err := io.Copy(sum, r.Body)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
				w.Header().Set("X-Body-Sha256", hex.EncodeToString(sum.Sum(nil)))
				w.Header().Set("X-Body-Method", r.Method)
				if tc.bodySize > 0 {
					n += firstPart
				}
				w.Header().Set("X-Body-Length", strconv.FormatInt(n, 10))
				_, _ = io.WriteString(w, "first\n")
				w.(http.Flusher).Flush()
				select {
				case <-clientGotFirst:
				case <-r.Context().Done():
					return
				case <-time.After(testutil.Wait):
					return // the client never saw the first chunk: it fails below
				}
				chunk := bytes.Repeat([]byte("x"), 64<<10)
				for written := 0; written < tail; written += len(chunk) {
					if _, err := w.Write(chunk); err != nil {
						return
					}
					w.(http.Flusher).Flush()
				}
			}))
			id := h.fleet.add(device{public: true, port: port})

			payload := make([]byte, tc.bodySize)
			_, _ = rand.Read(payload)
			want := sha256.Sum256(payload)
			var body io.Reader = http.NoBody
			if tc.bodySize > 0 {
				pr, pw := io.Pipe()
				body = pr
				go func() {
					if _, err := pw.Write(payload[:firstPart]); err != nil {
						return
					}
					select {
					case <-deviceGotFirst:
					case <-time.After(testutil.Wait):
						pw.CloseWithError(errors.New("the device never saw the first megabyte: the request body was not streamed"))
						return
					}
					_, _ = pw.Write(payload[firstPart:])
					_ = pw.Close()
				}()
			}
			ctx, cancel := context.WithTimeout(context.Background(), testutil.Wait)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, tc.method, "http://"+hostOf(id)+"/upload", body)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := h.client.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", tc.method, err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("status %d: %s", resp.StatusCode, b)
			}
			if got := resp.Header.Get("X-Body-Sha256"); got != hex.EncodeToString(want[:]) {
				t.Errorf("device hashed the body as %s, want %x", got, want)
			}
			if got := resp.Header.Get("X-Body-Length"); got != strconv.Itoa(tc.bodySize) {
				t.Errorf("device read %s body bytes, want %d", got, tc.bodySize)
			}
			if got := resp.Header.Get("X-Body-Method"); got != tc.method {
				t.Errorf("device saw method %s", got)
			}
			if resp.ContentLength != -1 {
				t.Errorf("response has Content-Length %d, want a streamed (chunked) body", resp.ContentLength)
			}
			br := bufio.NewReader(resp.Body)
			line, err := br.ReadString('\n')
			if err != nil || line != "first\n" {
				t.Fatalf("first chunk %q, %v", line, err)
			}
			close(clientGotFirst)
			n, err := io.Copy(io.Discard, br)
			if err != nil || n != tail {
				t.Fatalf("read %d bytes after the first chunk (%v), want %d", n, err, tail)
			}
			testutil.Eventually(t, "the request to be counted", func() error {
				if got := promtest.Sum(t, h.reg, "flock_proxy_requests_total", "outcome", outcomeProxied); got != 1 {
					return fmt.Errorf("proxied = %v", got)
				}
				return nil
			})
		})
	}
}

// TestWebSocket echoes messages through the proxy with coder/websocket on
// both ends: the Upgrade passes through the tunnel transport.
func TestWebSocket(t *testing.T) {
	h := newHarness(t)
	port := startDevice(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(4 << 20)
		for {
			typ, msg, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, msg); err != nil {
				return
			}
		}
	}))
	id := h.fleet.add(device{public: true, port: port})

	ctx, cancel := context.WithTimeout(context.Background(), testutil.Wait)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+hostOf(id)+"/ws", &websocket.DialOptions{HTTPClient: h.client})
	if err != nil {
		t.Fatalf("dial through the proxy: %v", err)
	}
	defer c.CloseNow()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	c.SetReadLimit(4 << 20)
	big := make([]byte, 2<<20)
	_, _ = rand.Read(big)
	messages := []struct {
		typ  websocket.MessageType
		data []byte
	}{
		{websocket.MessageText, []byte("hello device")},
		{websocket.MessageBinary, big},
		{websocket.MessageText, []byte("bye")},
	}
	for i, m := range messages {
		if err := c.Write(ctx, m.typ, m.data); err != nil {
			t.Fatalf("write message %d: %v", i, err)
		}
		typ, got, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("read echo %d: %v", i, err)
		}
		if typ != m.typ || !bytes.Equal(got, m.data) {
			t.Fatalf("echo %d: type %v, %d bytes; want type %v, %d bytes", i, typ, len(got), m.typ, len(m.data))
		}
	}
	if err := c.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("close: %v", err)
	}
	testutil.Eventually(t, "the WebSocket to be counted once closed", func() error {
		if got := promtest.Sum(t, h.reg, "flock_proxy_requests_total", "outcome", outcomeProxied); got != 1 {
			return fmt.Errorf("proxied = %v", got)
		}
		if got := promtest.Sum(t, h.reg, "flock_proxy_requests_in_flight"); got != 0 {
			return fmt.Errorf("in flight = %v", got)
		}
		return nil
	})
}

// TestForwarding checks what the device's app sees: its public Host as the
// client sent it, X-Forwarded-* set by the proxy (the client's own dropped),
// hop-by-hop headers removed, the request id passed on.
func TestForwarding(t *testing.T) {
	h := newHarness(t)
	type seen struct {
		Host, Proto, URI string
		Header           http.Header
	}
	port := startDevice(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "device-own-id")
		_ = json.NewEncoder(w).Encode(seen{Host: r.Host, Proto: r.Proto, URI: r.RequestURI, Header: r.Header})
	}))
	id := h.fleet.add(device{public: true, port: port})

	tests := []struct {
		name string
		host string
	}{
		{"canonical", hostOf(id)},
		{"upper case with port", strings.ToUpper(hostOf(id)) + ":8443"},
		{"trailing dot", hostOf(id) + "."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := h.get(t, tc.host, http.Header{
				"X-Request-Id":    {"req-42"},
				"X-Forwarded-For": {"6.6.6.6"},
				"Forwarded":       {"for=6.6.6.6"},
				"Connection":      {"X-Hop"},
				"X-Hop":           {"secret"},
			})
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			var got seen
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("decode %s: %v", body, err)
			}
			checks := []struct{ what, got, want string }{
				{"Host", got.Host, tc.host},
				{"protocol", got.Proto, "HTTP/1.1"},
				{"request URI", got.URI, "/some/path?q=1"},
				{"X-Forwarded-Host", got.Header.Get("X-Forwarded-Host"), tc.host},
				{"X-Forwarded-Proto", got.Header.Get("X-Forwarded-Proto"), "http"},
				{"X-Forwarded-For", strings.Join(got.Header.Values("X-Forwarded-For"), ","), "127.0.0.1"},
				{"Forwarded", got.Header.Get("Forwarded"), ""},
				{"X-Hop", got.Header.Get("X-Hop"), ""},
				{"X-Request-Id at the device", got.Header.Get("X-Request-Id"), "req-42"},
				{"X-Request-Id in the response", strings.Join(resp.Header.Values("X-Request-Id"), ","), "req-42"},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("%s = %q, want %q", c.what, c.got, c.want)
				}
			}
		})
	}
	if logs := h.logs.String(); !strings.Contains(logs, `"device":"`+id.String()+`"`) || !strings.Contains(logs, `"outcome":"proxied"`) {
		t.Errorf("log lacks the device id or outcome:\n%s", logs)
	}
}

// TestKeepAlivePerDevice shows that connections to a device are reused
// across requests and never shared between devices.
func TestKeepAlivePerDevice(t *testing.T) {
	h := newHarness(t)
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hello") })
	a := h.fleet.add(device{public: true, port: startDevice(t, hello)})
	b := h.fleet.add(device{public: true, port: startDevice(t, hello)})
	for i, id := range []uuid.UUID{a, a, b, a, b, b} {
		if resp, body := h.get(t, hostOf(id), nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d: status %d: %s", i, resp.StatusCode, body)
		}
	}
	if got := h.fleet.dialCount(a); got != 1 {
		t.Errorf("device a dialed %d times, want 1", got)
	}
	if got := h.fleet.dialCount(b); got != 1 {
		t.Errorf("device b dialed %d times, want 1", got)
	}
}

// TestErrorPages covers each answer the proxy gives itself. All the "no
// device here" cases, whatever their cause, must be byte-identical so that
// a scan of addresses learns nothing.
func TestErrorPages(t *testing.T) {
	h := newHarness(t)
	disabled := h.fleet.add(device{public: false, port: 1})
	offline := h.fleet.add(device{public: true, offline: true, port: 80})

	closedLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := portOf(t, closedLn.Addr())
	_ = closedLn.Close()
	portClosed := h.fleet.add(device{public: true, port: closedPort})

	// A device app that accepts and hangs up at once, as one crashing does.
	resetLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = resetLn.Close() })
	go func() {
		for {
			c, err := resetLn.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	resets := h.fleet.add(device{public: true, port: portOf(t, resetLn.Addr())})

	tests := []struct {
		name       string
		host       string
		wantStatus int
		wantTitle  string
	}{
		{"unknown device", hostOf(uuid.New()), 404, "No device serves this address"},
		{"disabled", hostOf(disabled), 404, "No device serves this address"},
		{"not a uuid", "printer." + testDomain, 404, "No device serves this address"},
		{"uuid without dashes", strings.ReplaceAll(disabled.String(), "-", "") + "." + testDomain, 404, "No device serves this address"},
		{"nested label", "www." + hostOf(disabled), 404, "No device serves this address"},
		{"other domain", disabled.String() + ".devices.example", 404, "No device serves this address"},
		{"the domain itself", testDomain, 404, "No device serves this address"},
		{"offline", hostOf(offline), 502, "The device is offline"},
		{"port closed", hostOf(portClosed), 502, "The device did not answer on its port"},
		{"port resets", hostOf(resets), 502, "The device did not answer on its port"},
	}
	var notFoundBody []byte
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := h.get(t, tc.host, http.Header{"X-Request-Id": {"probe-1"}})
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.wantStatus, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
				t.Errorf("Content-Type %q", ct)
			}
			if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("Cache-Control %q", cc)
			}
			if got := resp.Header.Get("X-Request-Id"); got != "probe-1" {
				t.Errorf("X-Request-Id %q", got)
			}
			for _, want := range []string{"<h1>" + tc.wantTitle + "</h1>", "<code>probe-1</code>"} {
				if !bytes.Contains(body, []byte(want)) {
					t.Errorf("page lacks %q:\n%s", want, body)
				}
			}
			if tc.wantStatus == http.StatusNotFound {
				if notFoundBody == nil {
					notFoundBody = body
				} else if !bytes.Equal(body, notFoundBody) {
					t.Errorf("404 page differs from the first one:\n%s\n---\n%s", body, notFoundBody)
				}
			}
		})
	}

	t.Run("generated request id", func(t *testing.T) {
		resp, body := h.get(t, hostOf(disabled), nil)
		id := resp.Header.Get("X-Request-Id")
		if id == "" || !bytes.Contains(body, []byte("<code>"+id+"</code>")) {
			t.Fatalf("request id %q missing from the page:\n%s", id, body)
		}
		if got := bytes.ReplaceAll(body, []byte(id), []byte("probe-1")); !bytes.Equal(got, notFoundBody) {
			t.Errorf("404 page with a generated id differs beyond the id:\n%s", body)
		}
	})

	t.Run("JSON for clients that prefer it", func(t *testing.T) {
		resp, body := h.get(t, hostOf(offline), http.Header{"Accept": {"application/json, text/html;q=0.5"}, "X-Request-Id": {"probe-2"}})
		if ct := resp.Header.Get("Content-Type"); ct != problem.ContentType {
			t.Fatalf("Content-Type %q: %s", ct, body)
		}
		var p problem.Problem
		if err := json.Unmarshal(body, &p); err != nil {
			t.Fatalf("decode %s: %v", body, err)
		}
		if p.Status != 502 || p.Code != "device_offline" || p.Title != "The device is offline" || p.RequestID != "probe-2" {
			t.Errorf("problem %+v", p)
		}
	})

	testutil.Eventually(t, "the outcomes to be counted", func() error {
		for outcome, want := range map[string]float64{outcomeNotFound: 8, outcomeOffline: 2, outcomeUnreachable: 2} {
			if got := promtest.Sum(t, h.reg, "flock_proxy_requests_total", "outcome", outcome); got != want {
				return fmt.Errorf("%s = %v, want %v", outcome, got, want)
			}
		}
		return nil
	})
}

// TestDialTimeoutAndResolveFailure covers the answers that depend on time
// and on the proxy's own dependencies.
func TestDialTimeoutAndResolveFailure(t *testing.T) {
	t.Run("dial timeout", func(t *testing.T) {
		h := newHarness(t, func(c *Config) { c.DialTimeout = 50 * time.Millisecond })
		// A tunnel whose device never accepts: the dial ends only with ctx.
		id := h.fleet.add(device{public: true, port: 80, dial: func(ctx context.Context) (net.Conn, error) {
			<-ctx.Done()
			return nil, fmt.Errorf("tunnel dial: %w", ctx.Err())
		}})
		resp, body := h.get(t, hostOf(id), nil)
		if resp.StatusCode != http.StatusGatewayTimeout || !bytes.Contains(body, []byte("did not answer in time")) {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
	})
	t.Run("route without a port", func(t *testing.T) {
		h := newHarness(t)
		id := h.fleet.add(device{public: true, port: 0})
		if resp, body := h.get(t, hostOf(id), nil); resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if got := h.fleet.dialCount(id); got != 0 {
			t.Errorf("dialed a route without a port %d times", got)
		}
	})
	t.Run("resolve fails", func(t *testing.T) {
		h := newHarness(t)
		h.fleet.failResolve(errors.New("database is down"))
		resp, body := h.get(t, hostOf(uuid.New()), nil)
		if resp.StatusCode != http.StatusServiceUnavailable || !bytes.Contains(body, []byte("temporarily unavailable")) {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if bytes.Contains(body, []byte("database")) {
			t.Errorf("the page leaks the internal error:\n%s", body)
		}
		if logs := h.logs.String(); !strings.Contains(logs, "database is down") || !strings.Contains(logs, `"level":"ERROR"`) {
			t.Errorf("the failure is not logged as an error:\n%s", logs)
		}
	})
}

// TestClientGone shows that a client that goes away ends what it started:
// a dial in progress and the request at the device.
func TestClientGone(t *testing.T) {
	t.Run("during the dial", func(t *testing.T) {
		h := newHarness(t)
		dialing := make(chan struct{})
		dialEnded := make(chan error, 1)
		id := h.fleet.add(device{public: true, port: 80, dial: func(ctx context.Context) (net.Conn, error) {
			close(dialing)
			select {
			case <-ctx.Done():
				dialEnded <- ctx.Err()
				return nil, ctx.Err()
			case <-time.After(testutil.Wait):
				dialEnded <- errors.New("the dial outlived the client")
				return nil, errors.New("test bound")
			}
		}})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		errc := doAsync(h.client, ctx, hostOf(id))
		<-dialing
		cancel()
		if err := <-dialEnded; !errors.Is(err, context.Canceled) {
			t.Fatalf("dial ended with %v, want context.Canceled", err)
		}
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Errorf("client got %v", err)
		}
		testutil.Eventually(t, "client_gone to be counted", func() error {
			if got := promtest.Sum(t, h.reg, "flock_proxy_requests_total", "outcome", outcomeClientGone); got != 1 {
				return fmt.Errorf("client_gone = %v", got)
			}
			return nil
		})
	})
	t.Run("during the device's request", func(t *testing.T) {
		h := newHarness(t)
		started := make(chan struct{})
		ended := make(chan error, 1)
		port := startDevice(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(started)
			select {
			case <-r.Context().Done():
				ended <- r.Context().Err()
			case <-time.After(testutil.Wait):
				ended <- errors.New("the device's request outlived the client")
			}
		}))
		id := h.fleet.add(device{public: true, port: port})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		errc := doAsync(h.client, ctx, hostOf(id))
		<-started
		cancel()
		if err := <-ended; !errors.Is(err, context.Canceled) {
			t.Fatalf("device request ended with %v, want context.Canceled", err)
		}
		<-errc
	})
}

// doAsync sends a GET off the test goroutine and reports its error.
func doAsync(c *http.Client, ctx context.Context, host string) <-chan error {
	errc := make(chan error, 1)
	go func() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/", nil)
		if err != nil {
			errc <- err
			return
		}
		resp, err := c.Do(req)
		if err == nil {
			_ = resp.Body.Close()
		}
		errc <- err
	}()
	return errc
}

func TestNewRejectsBadConfig(t *testing.T) {
	f := &fleet{}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no domain", Config{Resolve: f.resolve, Dial: f.dial}},
		{"domain with port", Config{Domain: "devices.test:443", Resolve: f.resolve, Dial: f.dial}},
		{"no resolve", Config{Domain: testDomain, Dial: f.dial}},
		{"no dial", Config{Domain: testDomain, Resolve: f.resolve}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Fatal("New accepted it")
			}
		})
	}
}

// TestAbortedMidStream: when the device breaks off a response already under
// way, the client's response breaks off too (rather than ending as if
// complete) and the request counts as aborted.
func TestAbortedMidStream(t *testing.T) {
	h := newHarness(t)
	port := startDevice(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // the device's server drops the connection
	}))
	id := h.fleet.add(device{public: true, port: port})
	resp, err := h.client.Get("http://" + hostOf(id) + "/")
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("the client read a complete body %q from an aborted response", body)
	}
	if string(body) != "first\n" {
		t.Errorf("read %q before the break", body)
	}
	testutil.Eventually(t, "the abort to be counted", func() error {
		if got := promtest.Sum(t, h.reg, "flock_proxy_requests_total", "outcome", outcomeAborted); got != 1 {
			return fmt.Errorf("aborted = %v", got)
		}
		return nil
	})
}
