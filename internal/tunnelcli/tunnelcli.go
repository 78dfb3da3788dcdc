// Package tunnelcli is the client side of `flock-api tunnel`: it opens the
// API's tunnel WebSocket to a device's port and relays it on stdin/stdout
// (an OpenSSH ProxyCommand) or on a local listening port.
package tunnelcli

import (
	"context"
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
	"sync"

	"github.com/coder/websocket"
)

// Subprotocol is the tunnel's WebSocket subprotocol.
const Subprotocol = "flock.tunnel.v1"

// Options say where to connect.
type Options struct {
	// API is the deployment's base URL (http:// or https://).
	API string
	// Token is a user token or an organisation API key.
	Token  string
	Device string
	Port   int
	// HTTPClient carries the upgrade (nil: http.DefaultClient).
	HTTPClient *http.Client
}

// Error is a tunnel the server refused or closed with a reason.
type Error struct {
	Status int // HTTP status of a refused upgrade, 0 otherwise
	Code   websocket.StatusCode
	Reason string
}

func (e *Error) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("refused (%d): %s", e.Status, e.Reason)
	}
	return e.Reason
}

// Dial opens the tunnel and returns it as a connection.
func Dial(ctx context.Context, o Options) (net.Conn, error) {
	u, err := url.Parse(strings.TrimRight(o.API, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("API URL %q: want http:// or https://", o.API)
	}
	u = u.JoinPath("v1", "devices", o.Device, "tunnel")
	u.RawQuery = url.Values{"port": {strconv.Itoa(o.Port)}}.Encode()
	h := http.Header{}
	if o.Token != "" {
		h.Set("Authorization", "Bearer "+o.Token)
	}
	c, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{Subprotocol},
		HTTPClient: o.HTTPClient})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, &Error{Status: resp.StatusCode, Reason: problemDetail(resp)}
		}
		return nil, fmt.Errorf("connect to %s: %w", u.Redacted(), err)
	}
	// One stream of bytes: no message may be refused for its size.
	c.SetReadLimit(-1)
	return websocket.NetConn(context.WithoutCancel(ctx), c, websocket.MessageBinary), nil
}

func problemDetail(resp *http.Response) string {
	if resp.Body == nil {
		return http.StatusText(resp.StatusCode)
	}
	defer resp.Body.Close()
	var p struct {
		Detail string `json:"detail"`
		Code   string `json:"code"`
	}
	if json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&p) != nil || p.Detail == "" {
		return http.StatusText(resp.StatusCode)
	}
	return p.Detail
}

// closed turns a WebSocket read error into the server's reason.
func closed(err error) error {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		if ce.Code == websocket.StatusNormalClosure {
			return nil
		}
		return &Error{Code: ce.Code, Reason: ce.Reason}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Stdio relays the tunnel on in and out until the device's side ends it,
// and returns the server's reason for a refusal. The end of in is not the
// end of the stream (a WebSocket cannot half-close, and the device may
// still answer): ssh, which runs this as its ProxyCommand, ends it with
// SIGHUP when it is done.
func Stdio(ctx context.Context, o Options, in io.Reader, out io.Writer) error {
	conn, err := Dial(ctx, o)
	if err != nil {
		return err
	}
	defer conn.Close()
	go func() { _, _ = io.Copy(conn, in) }()
	_, err = io.Copy(out, conn)
	return closed(err)
}

// Listen accepts local connections on addr and relays each through its own
// tunnel, until ctx ends. ready, when not nil, gets the bound address.
func Listen(ctx context.Context, o Options, addr string, ready func(net.Addr), log *slog.Logger) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	if ready != nil {
		ready(ln.Addr())
	}
	context.AfterFunc(ctx, func() { ln.Close() })
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		lc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Go(func() {
			defer lc.Close()
			tc, err := Dial(ctx, o)
			if err != nil {
				log.Warn("tunnel: could not open", "device", o.Device, "port", o.Port, "error", err)
				return
			}
			defer tc.Close()
			stop := context.AfterFunc(ctx, func() { lc.Close(); tc.Close() })
			defer stop()
			done := make(chan struct{})
			go func() {
				_, _ = io.Copy(tc, lc)
				tc.Close()
				close(done)
			}()
			_, err = io.Copy(lc, tc)
			if err = closed(err); err != nil {
				log.Warn("tunnel: closed", "device", o.Device, "port", o.Port, "reason", err)
			}
			lc.Close()
			<-done
		})
	}
}
