package simulate

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/flock-io/flock-api/gen/client"
	"github.com/flock-io/flock-api/internal/wgtunnel"
)

// WebPort is the overlay port a device with a tunnel serves its small web
// server on (what its public URL reaches by default).
const WebPort = 80

// tunnelRetry is the pause before a failed registration is tried again.
const tunnelRetry = 2 * time.Second

// runTunnel registers the device's WireGuard key, brings its tunnel up
// and serves on the overlay until ctx ends: the web server on WebPort and
// each Config.TunnelForward port relayed to its local address. It retries
// the registration until it succeeds (the deployment may start its tunnel
// replica after the device).
func (d *device) runTunnel(ctx context.Context) {
	priv, err := wgtunnel.GenerateKey()
	if err != nil {
		d.s.warn("tunnel", "generate a WireGuard key failed", "error", err)
		return
	}
	var reg *client.DeviceTunnel
	for {
		reg, err = d.registerTunnel(ctx, priv.PublicKey())
		if err == nil {
			break
		}
		d.s.warn("tunnel", "registering the tunnel key failed; retrying", "device", d.id.String(), "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(tunnelRetry):
		}
	}
	addr, err := netip.ParsePrefix(reg.Address)
	if err != nil {
		d.s.warn("tunnel", "unreadable overlay address", "address", reg.Address)
		return
	}
	srvPub, err := wgtunnel.ParseKey(reg.ServerPublicKey)
	if err != nil {
		d.s.warn("tunnel", "unreadable server key", "error", err)
		return
	}
	srvAddr, err := netip.ParseAddr(reg.ServerAddress)
	if err != nil {
		d.s.warn("tunnel", "unreadable server address", "address", reg.ServerAddress)
		return
	}
	endpoint := reg.Endpoint
	if d.s.cfg.TunnelEndpoint != "" {
		endpoint = d.s.cfg.TunnelEndpoint
	}
	c, err := wgtunnel.NewClient(ctx, wgtunnel.ClientConfig{PrivateKey: priv, Address: addr.Addr(), ServerPublicKey: srvPub,
		Endpoint: endpoint, ServerAddress: srvAddr, Keepalive: time.Duration(reg.KeepaliveSeconds) * time.Second, Log: d.log})
	if err != nil {
		d.s.warn("tunnel", "starting the WireGuard client failed", "error", err)
		return
	}
	defer c.Close()
	d.s.stats.tunnels.Add(1)
	defer d.s.stats.tunnels.Add(-1)

	var wg sync.WaitGroup
	defer wg.Wait()
	web, err := c.ListenTCP(WebPort)
	if err != nil {
		d.s.warn("tunnel", "listening on the overlay failed", "error", err)
		return
	}
	srv := &http.Server{Handler: d.webHandler(), ReadHeaderTimeout: 10 * time.Second}
	wg.Go(func() { _ = srv.Serve(web) })
	defer srv.Close()
	for port, to := range d.s.cfg.TunnelForward {
		l, err := c.ListenTCP(port)
		if err != nil {
			d.s.warn("tunnel", "listening on the overlay failed", "port", port, "error", err)
			continue
		}
		wg.Go(func() { _ = wgtunnel.Forward(ctx, l, to) })
	}
	<-ctx.Done()
}

func (d *device) registerTunnel(ctx context.Context, pub wgtunnel.Key) (*client.DeviceTunnel, error) {
	tok, err := d.currentToken(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := d.s.api.DeviceTunnelRegisterWithResponse(ctx, client.DeviceTunnelRegister{PublicKey: pub.String()},
		func(_ context.Context, r *http.Request) error {
			r.Header.Set("Authorization", "Bearer "+tok)
			return nil
		})
	if err != nil {
		return nil, fmt.Errorf("PUT /device/v1/tunnel: %w", err)
	}
	if resp.JSON200 == nil {
		return nil, apiError("PUT /device/v1/tunnel", resp.StatusCode(), resp.ApplicationproblemJSONDefault, resp.Body)
	}
	return resp.JSON200, nil
}

// webHandler is the device's web server: who it is, a stream of n bytes,
// and a WebSocket echo, enough to test the public URL's paths.
func (d *device) webHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintf(w, "flock simulated device %s (%s), asked for host %s\n", d.id, d.name, r.Host)
	})
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil || n < 0 {
			http.Error(w, "n must be a byte count", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = io.CopyN(w, zeros{}, n)
	})
	mux.HandleFunc("POST /echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = io.Copy(w, r.Body)
	})
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if err := c.Write(r.Context(), typ, b); err != nil {
				return
			}
		}
	})
	return mux
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
