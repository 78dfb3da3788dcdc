package tunnelroute

import (
	"bufio"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/netpipe"
	"github.com/flock-io/flock-api/internal/wgtunnel"
)

// Errors of a dial besides ErrOffline; each says what the user should
// hear (the WebSocket close reason, the proxy's error page).
var (
	ErrPortClosed = errors.New("port closed: the device refused the connection")
	ErrTimeout    = errors.New("device timeout: the device did not answer")
)

// DialPath is the internal-plane path a replica dials devices through.
const DialPath = "/internal/v1/tunnel/dial"

// upgradeProto names the internal plane's upgrade; after it the connection
// is the device's TCP stream.
const upgradeProto = "flock-tunnel"

// DefaultTimeout bounds a dial, through the overlay to the device's port.
const DefaultTimeout = 10 * time.Second

// Local is this process's tunnel server.
type Local interface {
	DialTCP(ctx context.Context, device uuid.UUID, port uint16) (net.Conn, error)
}

// Dialer reaches a device's port through whichever replica holds it.
type Dialer struct {
	Dir *Directory
	// Token authenticates this process to other replicas
	// (FLOCK_INTERNAL_TOKEN).
	Token   string
	Timeout time.Duration

	local atomic.Pointer[localReplica]
}

type localReplica struct {
	name string
	srv  Local
}

// SetLocal names this process's tunnel replica: a device it holds is
// dialled in process. It may be called while dials run (a process's
// targets start one by one).
func (d *Dialer) SetLocal(replica string, l Local) {
	d.local.Store(&localReplica{name: replica, srv: l})
}

// Dial opens a TCP stream to port on device. Its errors are ErrOffline,
// ErrPortClosed and ErrTimeout (wrapped), or the context's.
func (d *Dialer) Dial(ctx context.Context, device uuid.UUID, port uint16) (net.Conn, error) {
	h, err := d.Dir.Holder(ctx, device)
	if err != nil {
		return nil, err
	}
	timeout := d.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if l := d.local.Load(); l != nil && h.Replica == l.name {
		c, err := l.srv.DialTCP(dctx, device, port)
		return c, classify(ctx, err)
	}
	return d.remote(dctx, ctx, h, device, port)
}

// classify maps a tunnel server's dial error to the package's errors.
func classify(parent context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case parent.Err() != nil:
		return parent.Err()
	case errors.Is(err, wgtunnel.ErrNoPeer):
		return fmt.Errorf("%w (%v)", ErrOffline, err)
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return ErrTimeout
	default:
		return fmt.Errorf("%w (%v)", ErrPortClosed, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// remote asks the holding replica to dial, over an HTTP upgrade on the
// internal plane: one round trip, then the connection is the stream.
func (d *Dialer) remote(ctx, parent context.Context, h Holder, device uuid.UUID, port uint16) (net.Conn, error) {
	u, err := url.Parse(h.URL)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("tunnel replica %s has an unusable internal URL %q", h.Replica, h.URL)
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		if parent.Err() != nil {
			return nil, parent.Err()
		}
		// The replica died after its last renewal: the device's session
		// there is gone with it.
		return nil, fmt.Errorf("%w (its tunnel replica %s is unreachable: %v)", ErrOffline, h.Replica, err)
	}
	ok := false
	defer func() {
		if !ok {
			c.Close()
		}
	}()
	if dl, has := ctx.Deadline(); has {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	q := url.Values{"device": {device.String()}, "port": {strconv.Itoa(int(port))}}
	req := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: DialPath, RawQuery: q.Encode()}, Host: u.Host,
		Header: http.Header{"Connection": {"Upgrade"}, "Upgrade": {upgradeProto}, "Authorization": {"Bearer " + d.Token}}}
	if err := req.Write(c); err != nil {
		return nil, fmt.Errorf("ask tunnel replica %s: %w", h.Replica, classifyIO(parent, err))
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, fmt.Errorf("ask tunnel replica %s: %w", h.Replica, classifyIO(parent, err))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		var p struct {
			Code   string `json:"code"`
			Detail string `json:"detail"`
		}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&p)
		return nil, replicaError(h.Replica, resp.StatusCode, p.Code, p.Detail)
	}
	stop()
	_ = c.SetDeadline(time.Time{})
	ok = true
	return &bufferedConn{Conn: c, r: br}, nil
}

func classifyIO(parent context.Context, err error) error {
	if parent.Err() != nil {
		return parent.Err()
	}
	if isTimeout(err) {
		return ErrTimeout
	}
	return err
}

func replicaError(replica string, status int, code, detail string) error {
	switch code {
	case "device_offline":
		return fmt.Errorf("%w (%s)", ErrOffline, detail)
	case "port_closed":
		return fmt.Errorf("%w (%s)", ErrPortClosed, detail)
	case "device_timeout":
		return ErrTimeout
	}
	return fmt.Errorf("tunnel replica %s answered %d %s: %s", replica, status, code, detail)
}

// bufferedConn is the upgraded connection, reading first what the
// response's reader already buffered.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (c *bufferedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// Handler serves DialPath for other replicas: it dials the device through
// local and, once connected, turns the request's connection into the
// device's stream. token is FLOCK_INTERNAL_TOKEN; without one the handler
// refuses everything.
func Handler(local Local, token string, timeout time.Duration, log *slog.Logger) http.Handler {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fail := func(status int, code, detail string) {
			w.Header().Set("Content-Type", "application/problem+json")
			w.WriteHeader(status)
			_ = json.NewEncoder(w).Encode(map[string]any{"status": status, "code": code, "detail": detail})
		}
		auth := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		if token == "" || subtle.ConstantTimeCompare([]byte(auth), []byte(token)) != 1 {
			fail(http.StatusUnauthorized, "unauthorized", "the internal plane needs FLOCK_INTERNAL_TOKEN")
			return
		}
		if !strings.EqualFold(r.Header.Get("Upgrade"), upgradeProto) {
			fail(http.StatusBadRequest, "not_upgrade", "send Upgrade: "+upgradeProto)
			return
		}
		device, err := uuid.Parse(r.URL.Query().Get("device"))
		port, perr := strconv.ParseUint(r.URL.Query().Get("port"), 10, 16)
		if err != nil || perr != nil || port == 0 {
			fail(http.StatusBadRequest, "invalid", "device must be a uuid and port 1-65535")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		dc, err := local.DialTCP(ctx, device, uint16(port))
		cancel()
		if err = classify(r.Context(), err); err != nil {
			switch {
			case errors.Is(err, ErrOffline):
				fail(http.StatusNotFound, "device_offline", err.Error())
			case errors.Is(err, ErrTimeout):
				fail(http.StatusGatewayTimeout, "device_timeout", err.Error())
			case errors.Is(err, ErrPortClosed):
				fail(http.StatusBadGateway, "port_closed", err.Error())
			default:
				fail(http.StatusServiceUnavailable, "unavailable", err.Error())
			}
			return
		}
		defer dc.Close()
		rc := http.NewResponseController(w)
		c, brw, err := rc.Hijack()
		if err != nil {
			log.Warn("tunnel: hijack for a dial failed", "device_id", device, "error", err)
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Time{})
		if _, err := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+upgradeProto+"\r\n\r\n"); err != nil {
			return
		}
		in := net.Conn(c)
		if n := brw.Reader.Buffered(); n > 0 {
			in = &bufferedConn{Conn: c, r: brw.Reader}
		}
		netpipe.Pipe(in, dc, nil, nil)
	})
}
