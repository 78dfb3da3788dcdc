package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	// Defaults for the zero fields of a Policy.
	DefaultTimeout      = 10 * time.Second
	DefaultMaxResponse  = 64 << 10
	DefaultKeepResponse = 1024

	// ContentType is what deliveries carry when Message.ContentType is empty.
	ContentType = "application/cloudevents+json"
	// UserAgent identifies deliveries so that receivers can allow-list or
	// route them, and so the version can change with the signing scheme.
	UserAgent = "flock-webhooks/1"
)

var (
	// ErrInvalidURL and the errors below say which rule a webhook URL
	// breaks; their messages are meant for a 422 problem detail.
	ErrInvalidURL   = errors.New("invalid webhook URL")
	ErrScheme       = errors.New("webhook URL scheme must be http or https")
	ErrUserinfo     = errors.New("webhook URL must not contain a user name or password")
	ErrNoHost       = errors.New("webhook URL has no host")
	ErrUnresolvable = errors.New("webhook URL host does not resolve")

	// ErrRedirect is a 3xx answer: following it could lead anywhere,
	// including past the address checks, so the attempt fails instead.
	ErrRedirect = errors.New("redirects are not followed")
	// ErrStatus is an answer outside 2xx and 3xx.
	ErrStatus = errors.New("receiver did not answer 2xx")
	// ErrTimeout is an attempt that got no answer within Policy.Timeout.
	ErrTimeout = errors.New("timeout")
)

// Policy is how deliveries are made. The zero value is the production
// policy with the defaults below.
type Policy struct {
	// AllowPrivate lets delivery reach loopback, private, link-local, ULA,
	// CGNAT and other non-public addresses (development;
	// FLOCK_EVENTS_ALLOW_PRIVATE). Default false: such addresses are refused,
	// because a customer-supplied URL would otherwise let anyone make this
	// service call its own network (SSRF), e.g. cloud metadata.
	AllowPrivate bool
	// Timeout bounds the whole attempt, default 10 s: a 2xx within it is
	// success.
	Timeout time.Duration
	// MaxResponse is how many bytes of the response body are read (default
	// 64 KiB); the rest is discarded unread by closing the connection.
	MaxResponse int64
	// KeepResponse is how many of the first response bytes are kept for the
	// delivery log (default 1024).
	KeepResponse int

	// resolve replaces DNS in tests, so that rebinding and public names can
	// be simulated without a network.
	resolve func(ctx context.Context, host string) ([]netip.Addr, error)
}

func (p Policy) withDefaults() Policy {
	if p.Timeout <= 0 {
		p.Timeout = DefaultTimeout
	}
	if p.MaxResponse <= 0 {
		p.MaxResponse = DefaultMaxResponse
	}
	if p.KeepResponse <= 0 {
		p.KeepResponse = DefaultKeepResponse
	}
	return p
}

// lookup resolves host to the addresses a connection may go to; an IP
// literal is its own answer.
func (p Policy) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	var addrs []netip.Addr
	var err error
	if p.resolve != nil {
		addrs, err = p.resolve(ctx, host)
	} else {
		addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnresolvable, host, err)
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%w: %s: no addresses", ErrUnresolvable, host)
	}
	for i, a := range addrs {
		// The resolver may hand IPv4 answers back in mapped form, which
		// would then be dialled as IPv6.
		addrs[i] = a.Unmap()
	}
	return addrs, nil
}

// permit refuses the first non-public address of host. Every address is
// checked, not just the first, because the dialer may fall back to any of
// them, and a name mixing public and private answers is an attack.
func (p Policy) permit(host string, addrs []netip.Addr) error {
	if p.AllowPrivate {
		return nil
	}
	for _, a := range addrs {
		if why := refusal(a); why != "" {
			return &RefusedError{Host: host, Addr: a, Reason: why}
		}
	}
	return nil
}

// parseURL applies the rules that need no network.
func parseURL(raw string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // ue repeats the URL, which the caller already has
		}
		return nil, fmt.Errorf("%w: %w", ErrInvalidURL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		if u.Scheme == "" {
			return nil, fmt.Errorf("%w, the URL has none", ErrScheme)
		}
		return nil, fmt.Errorf("%w, not %q", ErrScheme, u.Scheme)
	}
	if u.Opaque != "" {
		return nil, fmt.Errorf("%w: %s: needs \"//\" after the scheme", ErrInvalidURL, u.Scheme)
	}
	if u.User != nil {
		return nil, ErrUserinfo
	}
	if u.Hostname() == "" {
		return nil, ErrNoHost
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return nil, fmt.Errorf("%w: port %q is not 1-65535", ErrInvalidURL, port)
		}
	}
	return u, nil
}

// CheckURL validates an endpoint URL when it is created or changed: http or
// https only, a host, no userinfo, resolvable, and (unless AllowPrivate)
// resolving only to public addresses. Errors say which rule failed, for a
// 422 problem detail. Passing is no guarantee for later deliveries: DNS can
// change, which is why Send checks again at connect time.
func (p Policy) CheckURL(ctx context.Context, raw string) error {
	u, err := parseURL(raw)
	if err != nil {
		return err
	}
	host := u.Hostname()
	addrs, err := p.lookup(ctx, host)
	if err != nil {
		return err
	}
	return p.permit(host, addrs)
}

// guard is the only way the Sender's transport opens connections, so every
// connection, including retries and HTTP/2 reconnects, is checked against
// the addresses actually dialled rather than those seen when the URL was
// saved (DNS rebinding).
type guard struct {
	policy Policy
	dialer *net.Dialer
}

func (g *guard) dialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, portText, err := net.SplitHostPort(address)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("dial %s: port: %w", address, err)
	}
	addrs, err := g.policy.lookup(ctx, host)
	if err != nil {
		return nil, err
	}
	if err := g.policy.permit(host, addrs); err != nil {
		return nil, err
	}
	// Dial the checked IPs themselves: handing the name back to the dialer
	// would resolve it a second time, and the answer could differ.
	var errs []error
	for _, a := range addrs {
		if (network == "tcp4" && !a.Is4()) || (network == "tcp6" && !a.Is6()) {
			continue
		}
		conn, err := g.dialer.DialContext(ctx, network, netip.AddrPortFrom(a, uint16(port)).String())
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("dial %s: no %s address among %v", host, network, addrs)
	}
	return nil, fmt.Errorf("dial %s: %w", host, errors.Join(errs...))
}

// control runs on the socket just before connect. The dial path above has
// already filtered, so this is a second lock on the same door: should any
// future code path reach the dialer with another address, it still cannot
// connect anywhere private.
func (g *guard) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("refusing to connect to unparsable address %q: %w", address, err)
	}
	if why := refusal(ap.Addr()); why != "" {
		return &RefusedError{Addr: ap.Addr(), Reason: why}
	}
	return nil
}

func (p Policy) guard() *guard {
	g := &guard{policy: p, dialer: &net.Dialer{Timeout: p.Timeout, KeepAlive: 30 * time.Second}}
	if !p.AllowPrivate {
		g.dialer.Control = g.control
	}
	return g
}

// DialContext is the guarded dial of the Sender, for other connections to
// customers' systems (their Kafka brokers, including the addresses those
// brokers advertise): the name is resolved once, every address checked,
// and the checked addresses dialled.
func (p Policy) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	return p.withDefaults().guard().dialContext(ctx, network, address)
}

// Sender delivers messages over one shared HTTP client whose connections all
// pass the address guard. It is safe for concurrent use.
type Sender struct {
	policy Policy
	client *http.Client
}

// NewSender returns a Sender for p, with defaults filled in.
func NewSender(p Policy) *Sender {
	p = p.withDefaults()
	g := p.guard()
	tr := &http.Transport{
		// An environment proxy would make the connection, and so the
		// address check, happen somewhere we do not control.
		Proxy:             nil,
		DialContext:       g.dialContext,
		ForceAttemptHTTP2: true,
		TLSClientConfig:   &tls.Config{MinVersion: tls.VersionTLS12},
		// The response is only logged; decoding gzip would let a small
		// body expand past MaxResponse's intent before we count it.
		DisableCompression:     true,
		TLSHandshakeTimeout:    min(10*time.Second, p.Timeout),
		MaxResponseHeaderBytes: 64 << 10,
		MaxIdleConns:           100,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        90 * time.Second,
	}
	return &Sender{
		policy: p,
		client: &http.Client{
			Transport: tr,
			// A redirect target is not checked when the URL is saved and may
			// be an internal service; the receiver must configure the final
			// URL instead.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			// No Jar: deliveries must not carry state from one customer's
			// endpoint to the next.
		},
	}
}

// Message is one delivery attempt's content.
type Message struct {
	ID string
	// Time is the signing timestamp sent as webhook-timestamp. It should be
	// the attempt's time, not the event's: receivers reject timestamps older
	// than a few minutes, so a retry must be re-signed. Zero means now.
	Time        time.Time
	Body        []byte
	ContentType string // application/cloudevents+json when empty
	Secrets     []string
}

// Result is the outcome of one attempt, for the delivery log and the retry
// schedule.
type Result struct {
	Status   int // 0 when no response
	Duration time.Duration
	Response []byte // the first KeepResponse bytes
	Err      error  // nil on 2xx; else why (timeout, refused address, redirect, non-2xx status...)
	Retry    bool   // whether a retry may succeed (false for a refused URL/SSRF or an invalid URL)
}

// Send makes one delivery attempt of m to url. A 2xx status within
// Policy.Timeout is success, even if reading the rest of the body then fails:
// the receiver has acknowledged, and redelivering would only duplicate.
func (s *Sender) Send(ctx context.Context, rawURL string, m Message) (res Result) {
	start := time.Now()
	defer func() { res.Duration = time.Since(start) }()

	u, err := parseURL(rawURL)
	if err != nil {
		return Result{Err: fmt.Errorf("webhook: %w", err)}
	}
	ts := m.Time
	if ts.IsZero() {
		ts = start
	}
	sig, err := Sign(m.Secrets, m.ID, ts, m.Body)
	if err != nil {
		// A bad secret or id is our configuration; the same attempt again
		// would fail the same way.
		return Result{Err: err}
	}
	ctype := m.ContentType
	if ctype == "" {
		ctype = ContentType
	}

	ctx, cancel := context.WithTimeout(ctx, s.policy.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(m.Body))
	if err != nil {
		return Result{Err: fmt.Errorf("webhook: build request: %w", err)}
	}
	req.Header.Set("webhook-id", m.ID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set("webhook-signature", sig)
	req.Header.Set("Content-Type", ctype)
	req.Header.Set("User-Agent", UserAgent)

	resp, err := s.client.Do(req)
	if err != nil {
		return Result{Err: s.attemptError(ctx, err), Retry: !errors.Is(err, ErrNonPublic)}
	}
	// Closing without draining drops the connection instead of reusing it;
	// that is the price of not reading an unbounded body.
	defer resp.Body.Close()

	res.Status = resp.StatusCode
	limited := io.LimitReader(resp.Body, s.policy.MaxResponse)
	res.Response, err = io.ReadAll(io.LimitReader(limited, int64(s.policy.KeepResponse)))
	if err == nil {
		// Reading on lets a receiver that writes its answer before
		// returning finish cleanly, up to the bound.
		_, err = io.Copy(io.Discard, limited)
	}
	readErr := err

	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return res
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		loc := resp.Header.Get("Location")
		if loc == "" {
			loc = "none"
		}
		res.Err = fmt.Errorf("webhook: status %d: %w (Location: %s)", resp.StatusCode, ErrRedirect, loc)
	default:
		res.Err = fmt.Errorf("webhook: %w: status %d", ErrStatus, resp.StatusCode)
	}
	if readErr != nil {
		res.Err = fmt.Errorf("%w; reading response: %w", res.Err, s.attemptError(ctx, readErr))
	}
	// Any non-2xx may be transient from where we stand (a deploy, a
	// misconfiguration being fixed); the retry schedule decides when to stop.
	res.Retry = true
	return res
}

// attemptError describes a transport failure without repeating the URL,
// which the delivery log records separately and which may carry a token.
func (s *Sender) attemptError(ctx context.Context, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout()) {
		return fmt.Errorf("webhook: %w: no complete answer within %s: %w", ErrTimeout, s.policy.Timeout, err)
	}
	return fmt.Errorf("webhook: %w", err)
}
