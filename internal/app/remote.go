package app

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers/tunnels"
	"github.com/flock-io/flock-api/internal/deviceproxy"
	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/internal/tunnelroute"
	"github.com/flock-io/flock-api/internal/wgtunnel"
	"github.com/flock-io/flock-api/workers/tunnel"
)

// remote is the remote-access wiring the api, tunnel and proxy targets of
// one process share: one dialer (in process for the devices this
// process's replica holds, over the internal plane for the rest), the
// overlay prefix, and the server key.
type remote struct {
	once   sync.Once
	err    error
	prefix netip.Prefix
	dialer *tunnelroute.Dialer

	keyMu sync.Mutex
	key   wgtunnel.Key

	mu     sync.Mutex
	server *wgtunnel.Server // this process's replica, nil when none
}

func (a *App) remoteAccess() (*remote, error) {
	r := &a.remoteState
	r.once.Do(func() {
		r.prefix, r.err = tunnelroute.ParsePrefix(a.cfg.TunnelPrefix)
		if r.err != nil {
			r.err = fmt.Errorf("FLOCK_TUNNEL_PREFIX: %w", r.err)
			return
		}
		r.dialer = &tunnelroute.Dialer{Dir: &tunnelroute.Directory{KV: a.kv}, Token: a.cfg.InternalToken}
	})
	return r, r.err
}

// serverKey loads the tunnel servers' key once it is first needed.
func (a *App) serverKey(ctx context.Context) (wgtunnel.Key, error) {
	r := &a.remoteState
	r.keyMu.Lock()
	defer r.keyMu.Unlock()
	if !r.key.IsZero() {
		return r.key, nil
	}
	k, err := tunnelroute.ServerKey(ctx, a.pool, a.cfg.TunnelPrivateKey)
	if err != nil {
		return k, err
	}
	r.key = k
	return k, nil
}

// tunnelEndpoint is what devices are told to send WireGuard to:
// FLOCK_TUNNEL_ENDPOINT, or with a replica in this process the public
// URL's host and its port; "" when this process knows of no tunnel.
func (a *App) tunnelEndpoint() string {
	if a.cfg.TunnelEndpoint != "" {
		return a.cfg.TunnelEndpoint
	}
	r := &a.remoteState
	r.mu.Lock()
	srv := r.server
	r.mu.Unlock()
	if srv == nil {
		return ""
	}
	host := "127.0.0.1"
	if u, err := url.Parse(a.cfg.PublicURL); err == nil && u.Hostname() != "" {
		host = u.Hostname()
	}
	return net.JoinHostPort(host, strconv.Itoa(srv.Port()))
}

// tunnelsHandler configures the API's remote-access operations.
func (a *App) tunnelsHandler() (*tunnels.Tunnels, error) {
	r, err := a.remoteAccess()
	if err != nil {
		return nil, err
	}
	return &tunnels.Tunnels{Dial: r.dialer.Dial, Prefix: r.prefix, Endpoint: a.tunnelEndpoint, ServerKey: a.serverKey,
		MaxPerDevice: a.cfg.TunnelMaxSessionsPerDevice, MaxPerActor: a.cfg.TunnelMaxSessionsPerUser}, nil
}

// devicePublicURL is a device's public URL, nil without a device URL
// domain.
func (a *App) devicePublicURL() func(uuid.UUID) string {
	domain := strings.TrimSuffix(strings.ToLower(a.cfg.DeviceURLDomain), ".")
	if domain == "" {
		return nil
	}
	scheme := "http"
	if a.cfg.ProxyTLSCert != "" {
		scheme = "https"
	}
	return func(id uuid.UUID) string { return scheme + "://" + id.String() + "." + domain }
}

// initTunnel runs a tunnel replica: the WireGuard server on its UDP port,
// the directory records, and the internal plane's dial path.
func (a *App) initTunnel(ctx context.Context) (*modules.Service, error) {
	r, err := a.remoteAccess()
	if err != nil {
		return nil, err
	}
	key, err := a.serverKey(ctx)
	if err != nil {
		return nil, err
	}
	name := a.cfg.TunnelReplica
	if name == "" {
		host, _ := os.Hostname()
		name = fmt.Sprintf("%s-%d-%s", host, os.Getpid(), uuid.NewString()[:8])
	}
	internal := internalURL(a.cfg.InternalURL, a.cfg.InternalHost, a.server.Addr())
	rep, err := tunnel.New(ctx, tunnel.Config{Pool: a.pool, Dir: r.dialer.Dir, PrivateKey: key, Listen: a.cfg.TunnelListen,
		Prefix: r.prefix, Replica: name, InternalURL: internal, Log: a.log, Registerer: a.metrics.Registry})
	if err != nil {
		return nil, fmt.Errorf("FLOCK_TUNNEL_LISTEN: %w", err)
	}
	r.mu.Lock()
	r.server = rep.Server()
	r.mu.Unlock()
	r.dialer.SetLocal(name, rep.Server())
	a.server.Router().Handle(tunnelroute.DialPath, rep.Handler(a.cfg.InternalToken))
	if a.cfg.InternalToken == "" && !a.cfg.Dev {
		a.log.Warn("tunnel: FLOCK_INTERNAL_TOKEN is unset: other processes cannot dial the devices this replica holds")
	}
	a.log.Info("tunnel replica listening", "replica", name, "udp_port", strconv.Itoa(rep.Server().Port()),
		"public_key", key.PublicKey().String(), "prefix", r.prefix.String(), "internal_url", internal)
	return &modules.Service{Run: rep.Run}, nil
}

// internalURL is how other processes reach this one's HTTP server at
// listen: the URL set, or http://<host>:<listen's port> (host 127.0.0.1 by
// default; an IPv6 pod address bracketed, as a URL needs).
func internalURL(set, host, listen string) string {
	if set != "" {
		return set
	}
	_, port, _ := net.SplitHostPort(listen)
	return "http://" + net.JoinHostPort(cmp.Or(host, "127.0.0.1"), port)
}

// initProxy serves devices' public URLs on their own listener.
func (a *App) initProxy(ctx context.Context) (*modules.Service, error) {
	if a.cfg.DeviceURLDomain == "" {
		return nil, errors.New("FLOCK_DEVICE_URL_DOMAIN: the proxy target needs the domain of devices' public URLs")
	}
	r, err := a.remoteAccess()
	if err != nil {
		return nil, err
	}
	q := db.New(a.pool)
	p, err := deviceproxy.New(deviceproxy.Config{Domain: a.cfg.DeviceURLDomain, Log: a.log, Registerer: a.metrics.Registry,
		Resolve: func(ctx context.Context, id uuid.UUID) (deviceproxy.Route, error) {
			d, err := q.DevicePublicURL(ctx, id)
			if errors.Is(err, pgx.ErrNoRows) || (err == nil && !d.PublicUrlEnabled) {
				return deviceproxy.Route{}, deviceproxy.ErrNotPublic
			}
			if err != nil {
				return deviceproxy.Route{}, fmt.Errorf("load public URL of %s: %w", id, err)
			}
			return deviceproxy.Route{Device: id, Port: uint16(d.PublicUrlPort)}, nil
		},
		Dial: func(ctx context.Context, id uuid.UUID, port uint16) (net.Conn, error) {
			c, err := r.dialer.Dial(ctx, id, port)
			if errors.Is(err, tunnelroute.ErrOffline) {
				return nil, fmt.Errorf("%w: %w", deviceproxy.ErrOffline, err)
			}
			return c, err
		}})
	if err != nil {
		return nil, err
	}
	// No write timeout: a streamed response or a WebSocket lasts as long
	// as it lasts.
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	if a.cfg.ProxyTLSCert != "" {
		certs, err := deviceproxy.NewCertReloader(a.cfg.ProxyTLSCert, a.cfg.ProxyTLSKey)
		if err != nil {
			return nil, fmt.Errorf("FLOCK_PROXY_TLS_CERT: %w", err)
		}
		srv.TLSConfig = &tls.Config{GetCertificate: certs.GetCertificate, MinVersion: tls.VersionTLS12}
	}
	ln, err := net.Listen("tcp", a.cfg.ProxyAddr)
	if err != nil {
		return nil, fmt.Errorf("FLOCK_PROXY_ADDR: %w", err)
	}
	a.log.Info("proxy listening", "addr", ln.Addr().String(), "domain", a.cfg.DeviceURLDomain, "tls", srv.TLSConfig != nil)
	return &modules.Service{Run: func(ctx context.Context) error {
		errc := make(chan error, 1)
		go func() {
			if srv.TLSConfig != nil {
				errc <- srv.ServeTLS(ln, "", "")
			} else {
				errc <- srv.Serve(ln)
			}
		}()
		select {
		case err := <-errc:
			return fmt.Errorf("proxy: %w", err)
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.cfg.ShutdownGrace)
		defer cancel()
		// Upgraded connections (WebSockets) are hijacked: Shutdown does
		// not wait for them, Close ends them.
		if err := srv.Shutdown(sctx); err != nil {
			_ = srv.Close()
		}
		p.CloseIdleConnections()
		<-errc
		return nil
	}}, nil
}
