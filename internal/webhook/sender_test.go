package webhook

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// received is what a test receiver saw of one request.
type received struct {
	method string
	header http.Header
	body   []byte
}

// receiver is a loopback HTTP server that records requests and counts TCP
// connections, so a test can tell "refused before connecting" from
// "connected but no request".
type receiver struct {
	srv   *httptest.Server
	got   chan received
	conns atomic.Int64
	reqs  atomic.Int64
}

func newReceiver(t *testing.T, respond http.HandlerFunc) *receiver {
	t.Helper()
	r := &receiver{got: make(chan received, 16)}
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.reqs.Add(1)
		body, _ := io.ReadAll(req.Body)
		select {
		case r.got <- received{req.Method, req.Header.Clone(), body}:
		default:
		}
		respond(w, req)
	}))
	r.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			r.conns.Add(1)
		}
	}
	r.srv.Start()
	t.Cleanup(r.srv.Close)
	return r
}

// last returns the request the receiver saw; Send has returned by the time
// it is called, so the handler has already recorded it.
func (r *receiver) last(t *testing.T) received {
	t.Helper()
	select {
	case got := <-r.got:
		return got
	default:
		t.Fatal("the receiver saw no request")
		return received{}
	}
}

// port returns the receiver's port, for URLs naming it by another host.
func (r *receiver) port(t *testing.T) string {
	t.Helper()
	u, err := url.Parse(r.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Port()
}

func answer(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

func testMessage(t *testing.T, secrets ...string) Message {
	t.Helper()
	return Message{
		ID:      "msg_2ZxLnA7",
		Time:    time.Now().Truncate(time.Second),
		Body:    []byte(`{"specversion":"1.0","id":"e1","source":"/fleets/f1","type":"io.flock.device.online","data":{"device":"d1"}}`),
		Secrets: secrets,
	}
}

func TestSendDelivers(t *testing.T) {
	s1, s2 := mustSecret(t), mustSecret(t)
	sender := NewSender(Policy{AllowPrivate: true})

	for _, tc := range []struct {
		name        string
		secrets     []string
		contentType string
		status      int
		response    string
	}{
		{"one secret", []string{s1}, "", http.StatusOK, "thanks"},
		{"rotation: two secrets", []string{s1, s2}, "", http.StatusAccepted, ""},
		{"204 and explicit content type", []string{s2}, "application/json", http.StatusNoContent, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rcv := newReceiver(t, answer(tc.status, tc.response))
			m := testMessage(t, tc.secrets...)
			m.ContentType = tc.contentType

			res := sender.Send(t.Context(), rcv.srv.URL+"/hooks/flock", m)
			if res.Err != nil || res.Status != tc.status {
				t.Fatalf("Send = status %d, err %v; want %d, nil", res.Status, res.Err, tc.status)
			}
			if string(res.Response) != tc.response {
				t.Errorf("Response = %q, want %q", res.Response, tc.response)
			}
			if res.Duration <= 0 {
				t.Errorf("Duration = %v", res.Duration)
			}

			got := rcv.last(t)
			if got.method != http.MethodPost {
				t.Errorf("method %s, want POST", got.method)
			}
			if !bytes.Equal(got.body, m.Body) {
				t.Errorf("body %q, want %q", got.body, m.Body)
			}
			wantType := tc.contentType
			if wantType == "" {
				wantType = "application/cloudevents+json"
			}
			for name, want := range map[string]string{
				"webhook-id":        m.ID,
				"webhook-timestamp": strconv.FormatInt(m.Time.Unix(), 10),
				"Content-Type":      wantType,
				"User-Agent":        "flock-webhooks/1",
			} {
				if v := got.header.Get(name); v != want {
					t.Errorf("%s: %q, want %q", name, v, want)
				}
			}
			// The receiver checks with its own reading of the spec first,
			// then with Verify, once per secret as a customer would.
			if err := specCheck(tc.secrets, got.header, got.body); err != nil {
				t.Errorf("spec check: %v", err)
			}
			for _, secret := range tc.secrets {
				if err := Verify(secret, got.header, got.body, time.Now(), 0); err != nil {
					t.Errorf("Verify: %v", err)
				}
			}
		})
	}
}

func TestSendZeroTimeSignsNow(t *testing.T) {
	secret := mustSecret(t)
	rcv := newReceiver(t, answer(http.StatusOK, ""))
	m := testMessage(t, secret)
	m.Time = time.Time{}
	before := time.Now().Unix()
	if res := NewSender(Policy{AllowPrivate: true}).Send(t.Context(), rcv.srv.URL, m); res.Err != nil {
		t.Fatal(res.Err)
	}
	got := rcv.last(t)
	ts, err := strconv.ParseInt(got.header.Get("webhook-timestamp"), 10, 64)
	if err != nil || ts < before || ts > time.Now().Unix() {
		t.Fatalf("webhook-timestamp %q, want the attempt's time", got.header.Get("webhook-timestamp"))
	}
	if err := specCheck([]string{secret}, got.header, got.body); err != nil {
		t.Fatal(err)
	}
}

func TestSendRefusesNonPublicAtDial(t *testing.T) {
	rcv := newReceiver(t, answer(http.StatusOK, "reached"))
	port := rcv.port(t)
	strict := NewSender(Policy{})

	for _, tc := range []struct{ name, url string }{
		{"loopback literal", rcv.srv.URL},
		{"localhost resolves to loopback", "http://localhost:" + port + "/"},
		{"IPv4-mapped loopback", "http://[::ffff:127.0.0.1]:" + port + "/"},
		{"IPv6 loopback", "http://[::1]:" + port + "/"},
		{"metadata", "http://169.254.169.254/latest/meta-data/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := strict.Send(t.Context(), tc.url, testMessage(t, mustSecret(t)))
			if !errors.Is(res.Err, ErrNonPublic) {
				t.Fatalf("Err = %v, want a refused address", res.Err)
			}
			var refused *RefusedError
			if !errors.As(res.Err, &refused) {
				t.Fatalf("Err = %T, want *RefusedError in the chain", res.Err)
			}
			if res.Retry || res.Status != 0 || res.Response != nil {
				t.Fatalf("Result = %+v, want no retry, no status, no response", res)
			}
		})
	}
	if n := rcv.conns.Load(); n != 0 {
		t.Fatalf("the receiver accepted %d connections; refusals must happen before connecting", n)
	}

	// The same receiver is reachable, by name too, when private addresses
	// are allowed, which shows the refusals above came from the policy.
	lax := NewSender(Policy{AllowPrivate: true})
	res := lax.Send(t.Context(), "http://localhost:"+port+"/", testMessage(t, mustSecret(t)))
	if res.Err != nil || string(res.Response) != "reached" {
		t.Fatalf("AllowPrivate: Send = %+v", res)
	}
	if n := rcv.reqs.Load(); n != 1 {
		t.Fatalf("the receiver saw %d requests, want 1", n)
	}
}

// A name that is public when the endpoint is saved and private at delivery
// time must be refused at delivery: checking only at creation is not enough.
func TestSendDNSRebinding(t *testing.T) {
	rcv := newReceiver(t, answer(http.StatusOK, ""))
	var lookups atomic.Int64
	p := Policy{resolve: func(_ context.Context, host string) ([]netip.Addr, error) {
		if lookups.Add(1) == 1 {
			return []netip.Addr{netip.MustParseAddr("93.184.215.14")}, nil
		}
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}}
	u := "http://rebind.example:" + rcv.port(t) + "/hook"

	if err := p.CheckURL(t.Context(), u); err != nil {
		t.Fatalf("CheckURL while public: %v", err)
	}
	res := NewSender(p).Send(t.Context(), u, testMessage(t, mustSecret(t)))
	if !errors.Is(res.Err, ErrNonPublic) || res.Retry {
		t.Fatalf("Send after rebinding = %+v, want refused without retry", res)
	}
	if !strings.Contains(res.Err.Error(), "rebind.example resolves to 127.0.0.1") {
		t.Errorf("Err %q should name the host and the address", res.Err)
	}
	if n := rcv.conns.Load(); n != 0 {
		t.Fatalf("the receiver accepted %d connections", n)
	}
}

func TestSendMixedAnswersRefused(t *testing.T) {
	rcv := newReceiver(t, answer(http.StatusOK, ""))
	p := Policy{resolve: fakeDNS(map[string][]string{"mixed.example": {"127.0.0.1", "93.184.215.14"}})}
	res := NewSender(p).Send(t.Context(), "http://mixed.example:"+rcv.port(t)+"/", testMessage(t, mustSecret(t)))
	if !errors.Is(res.Err, ErrNonPublic) || res.Retry {
		t.Fatalf("Send = %+v, want refused", res)
	}
	if n := rcv.conns.Load(); n != 0 {
		t.Fatalf("the receiver accepted %d connections", n)
	}
}

func TestSendAttemptOutcomes(t *testing.T) {
	secret := mustSecret(t)
	target := newReceiver(t, answer(http.StatusOK, "redirect target"))
	// Handlers that stall wait for the test to end rather than for a sleep.
	release := make(chan struct{})
	t.Cleanup(func() { close(release) }) // runs before the servers' Close
	endless := bytes.Repeat([]byte("x"), 32<<10)

	for _, tc := range []struct {
		name     string
		policy   Policy
		respond  http.HandlerFunc
		tls      bool
		status   int
		errIs    error  // nil: success
		errHas   string // text Err must contain
		retry    bool
		response string // the kept bytes; "-" to skip
		keep     int    // expected len(Response) when response is "-"
	}{
		{
			name:   "5xx is a failure worth retrying",
			policy: Policy{AllowPrivate: true},
			respond: func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusServiceUnavailable)
				io.WriteString(w, "busy, try later")
			},
			status: 503, errIs: ErrStatus, errHas: "503", retry: true, response: "busy, try later",
		},
		{
			name:    "4xx is a failure worth retrying",
			policy:  Policy{AllowPrivate: true},
			respond: answer(http.StatusUnauthorized, `{"error":"bad signature"}`),
			status:  401, errIs: ErrStatus, retry: true, response: `{"error":"bad signature"}`,
		},
		{
			name:   "redirect is not followed",
			policy: Policy{AllowPrivate: true},
			respond: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.srv.URL+"/moved", http.StatusTemporaryRedirect)
			},
			status: 307, errIs: ErrRedirect,
			errHas: "redirects are not followed (Location: " + target.srv.URL + "/moved)",
			retry:  true, response: "-", keep: -1,
		},
		{
			name:   "slow receiver times out",
			policy: Policy{AllowPrivate: true, Timeout: 200 * time.Millisecond},
			respond: func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-release:
				case <-r.Context().Done():
				}
			},
			status: 0, errIs: ErrTimeout, errHas: "timeout", retry: true, response: "",
		},
		{
			name:   "2xx then a stalled body is still success",
			policy: Policy{AllowPrivate: true, Timeout: 200 * time.Millisecond},
			respond: func(w http.ResponseWriter, r *http.Request) {
				io.WriteString(w, "ok")
				w.(http.Flusher).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
				}
			},
			status: 200, response: "ok",
		},
		{
			// An endless body: Send can only return before its one-minute
			// timeout if it stops reading at MaxResponse.
			name:   "huge body is truncated and 2xx still succeeds",
			policy: Policy{AllowPrivate: true, Timeout: time.Minute, MaxResponse: 256 << 10, KeepResponse: 100},
			respond: func(w http.ResponseWriter, r *http.Request) {
				for r.Context().Err() == nil {
					if _, err := w.Write(endless); err != nil {
						return
					}
				}
			},
			status: 200, response: "-", keep: 100,
		},
		{
			name:    "MaxResponse below KeepResponse bounds the kept bytes",
			policy:  Policy{AllowPrivate: true, MaxResponse: 10, KeepResponse: 100},
			respond: answer(http.StatusOK, strings.Repeat("y", 50)),
			status:  200, response: strings.Repeat("y", 10),
		},
		{
			name:    "TLS certificates are verified",
			policy:  Policy{AllowPrivate: true},
			respond: answer(http.StatusOK, ""),
			tls:     true,
			status:  0, errHas: "certificate", retry: true, response: "",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var srvURL string
			var srvReqs *atomic.Int64
			if tc.tls {
				var n atomic.Int64
				srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					n.Add(1)
					tc.respond(w, r)
				}))
				// The failed handshake is the point; keep it out of the output.
				srv.Config.ErrorLog = log.New(io.Discard, "", 0)
				srv.StartTLS()
				t.Cleanup(srv.Close)
				srvURL, srvReqs = srv.URL, &n
			} else {
				rcv := newReceiver(t, tc.respond)
				srvURL, srvReqs = rcv.srv.URL, &rcv.reqs
			}
			p := tc.policy.withDefaults()

			res := NewSender(tc.policy).Send(t.Context(), srvURL+"/hook", testMessage(t, secret))

			if res.Status != tc.status {
				t.Errorf("Status = %d, want %d", res.Status, tc.status)
			}
			switch {
			case tc.errIs == nil && tc.errHas == "":
				if res.Err != nil {
					t.Errorf("Err = %v, want success", res.Err)
				}
			case res.Err == nil:
				t.Errorf("Err = nil, want a failure")
			default:
				if tc.errIs != nil && !errors.Is(res.Err, tc.errIs) {
					t.Errorf("Err = %v, want %v", res.Err, tc.errIs)
				}
				if !strings.Contains(res.Err.Error(), tc.errHas) {
					t.Errorf("Err = %q, want it to contain %q", res.Err, tc.errHas)
				}
			}
			if res.Retry != tc.retry {
				t.Errorf("Retry = %v, want %v", res.Retry, tc.retry)
			}
			switch {
			case tc.response != "-":
				if string(res.Response) != tc.response {
					t.Errorf("Response = %q, want %q", res.Response, tc.response)
				}
			case tc.keep >= 0 && len(res.Response) != tc.keep:
				t.Errorf("len(Response) = %d, want %d", len(res.Response), tc.keep)
			}
			if res.Duration >= p.Timeout+5*time.Second {
				t.Errorf("Duration = %v, beyond the %v timeout", res.Duration, p.Timeout)
			}
			if tc.errIs == ErrTimeout && res.Duration < p.Timeout {
				t.Errorf("Duration = %v, shorter than the %v timeout it reports", res.Duration, p.Timeout)
			}
			if tc.name == "huge body is truncated and 2xx still succeeds" && res.Duration >= p.Timeout/2 {
				t.Errorf("Duration = %v: the body was read to the timeout, not stopped at MaxResponse", res.Duration)
			}
			if tc.tls && srvReqs.Load() != 0 {
				t.Errorf("the TLS receiver saw %d requests despite an untrusted certificate", srvReqs.Load())
			}
		})
	}
	if n := target.reqs.Load(); n != 0 {
		t.Fatalf("the redirect target saw %d requests; redirects must not be followed", n)
	}
}

func TestSendRejectsBadInputWithoutRetry(t *testing.T) {
	rcv := newReceiver(t, answer(http.StatusOK, ""))
	sender := NewSender(Policy{AllowPrivate: true})
	good := mustSecret(t)

	for _, tc := range []struct {
		name  string
		url   string
		m     Message
		errIs error
	}{
		{"ftp URL", "ftp://" + rcv.srv.Listener.Addr().String() + "/", testMessage(t, good), ErrScheme},
		{"userinfo", "http://u:p@" + rcv.srv.Listener.Addr().String() + "/", testMessage(t, good), ErrUserinfo},
		{"no host", "http:///hook", testMessage(t, good), ErrNoHost},
		{"invalid secret", rcv.srv.URL, testMessage(t, "whsec_nope"), ErrInvalidSecret},
		{"no secrets", rcv.srv.URL, testMessage(t), ErrInvalidSecret},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := sender.Send(t.Context(), tc.url, tc.m)
			if !errors.Is(res.Err, tc.errIs) || res.Retry {
				t.Fatalf("Send = %+v, want %v without retry", res, tc.errIs)
			}
		})
	}
	if n := rcv.conns.Load(); n != 0 {
		t.Fatalf("the receiver accepted %d connections", n)
	}
}

// The client's configuration is the rest of the SSRF story: no proxy could
// make the connection on our behalf, no cookies carry state between
// customers, and redirects come back as responses.
func TestSenderClientConfiguration(t *testing.T) {
	s := NewSender(Policy{})
	tr, ok := s.client.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("transport is %T", s.client.Transport)
	}
	if tr.Proxy != nil {
		t.Error("Transport.Proxy is set; the environment's proxy would bypass the address guard")
	}
	if s.client.Jar != nil {
		t.Error("the client keeps cookies")
	}
	if tr.TLSClientConfig == nil || tr.TLSClientConfig.InsecureSkipVerify {
		t.Error("TLS verification is not on")
	}
	if err := s.client.CheckRedirect(nil, nil); !errors.Is(err, http.ErrUseLastResponse) {
		t.Errorf("CheckRedirect = %v, want http.ErrUseLastResponse", err)
	}
	if s.policy.Timeout != DefaultTimeout || s.policy.MaxResponse != DefaultMaxResponse || s.policy.KeepResponse != DefaultKeepResponse {
		t.Errorf("defaults not applied: %+v", s.policy)
	}
}

// The connect-time hook refuses by itself, whatever address reaches it.
func TestGuardControl(t *testing.T) {
	g := &guard{}
	for addr, public := range map[string]bool{
		"127.0.0.1:80":          false,
		"[::1]:443":             false,
		"169.254.169.254:80":    false,
		"[::ffff:10.0.0.1]:80":  false,
		"[fe80::1%eth0]:80":     false,
		"93.184.215.14:443":     true,
		"[2606:4700::1111]:443": true,
		"not an address":        false,
	} {
		err := g.control("tcp", addr, nil)
		if (err == nil) != public {
			t.Errorf("control(%q) = %v, want public=%v", addr, err, public)
		}
	}
}
