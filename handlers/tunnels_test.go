package handlers_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
	"github.com/flock-io/flock-api/internal/tunnelcli"
	"github.com/flock-io/flock-api/internal/wgtunnel"
)

// tunnelDevice is the world's device with a WireGuard tunnel up to the
// server's (in-process) tunnel replica, echoing whatever reaches its
// overlay port 7.
func tunnelDevice(t *testing.T, w *world) (reg map[string]any) {
	t.Helper()
	tok := w.device.token(t, w.srv)
	priv, err := wgtunnel.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	reg = must(t, w.srv, 200, "PUT", "/device/v1/tunnel", tok, map[string]any{"public_key": priv.PublicKey().String()})
	addr := netip.MustParsePrefix(reg["address"].(string)).Addr()
	srvPub, err := wgtunnel.ParseKey(reg["server_public_key"].(string))
	if err != nil {
		t.Fatal(err)
	}
	// The endpoint names the public host (flock.test), which does not
	// resolve here: the port is the replica's.
	_, port, _ := net.SplitHostPort(reg["endpoint"].(string))
	c, err := wgtunnel.NewClient(t.Context(), wgtunnel.ClientConfig{PrivateKey: priv, Address: addr, ServerPublicKey: srvPub,
		Endpoint: "127.0.0.1:" + port, ServerAddress: netip.MustParseAddr(reg["server_address"].(string)), Keepalive: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	l, err := c.ListenTCP(7)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				_, _ = io.Copy(conn, conn)
			}()
		}
	}()
	return reg
}

// openTunnel opens a tunnel to the world's device as token, and fails the
// test on an error.
func openTunnel(t *testing.T, w *world, token string, port int) net.Conn {
	t.Helper()
	c, err := tunnelcli.Dial(t.Context(), tunnelcli.Options{API: w.srv.URL, Token: token, Device: w.device.id.String(), Port: port})
	if err != nil {
		t.Fatalf("open a tunnel to port %d: %v", port, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// echo writes msg and reads it back, or reports why not.
func echo(c net.Conn, msg []byte) error {
	go func() { _, _ = c.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return errors.New("the echo differs")
	}
	return nil
}

// closeReason reads c until the server closes it and returns its reason.
func closeReason(c net.Conn) (websocket.StatusCode, string) {
	_, err := io.Copy(io.Discard, c)
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return ce.Code, ce.Reason
	}
	return -1, ""
}

// TestTunnelRegistration covers the device side: an overlay address from
// the prefix that survives a new key, and the refusals.
func TestTunnelRegistration(t *testing.T) {
	srv := apptest.Start(t)
	w := newWorld(t, srv).withFleet(t)
	tok := w.device.token(t, srv)
	k1, _ := wgtunnel.GenerateKey()
	k2, _ := wgtunnel.GenerateKey()
	first := must(t, srv, 200, "PUT", "/device/v1/tunnel", tok, map[string]any{"public_key": k1.PublicKey().String()})
	addr := netip.MustParsePrefix(first["address"].(string))
	prefix := netip.MustParsePrefix(first["prefix"].(string))
	if !prefix.Contains(addr.Addr()) || addr.Bits() != prefix.Bits() || first["keepalive_seconds"].(float64) != 25 {
		t.Fatalf("registration %v: want an address in the prefix and a 25 s keepalive", first)
	}
	if host, port, err := net.SplitHostPort(first["endpoint"].(string)); err != nil || host != "flock.test" || port == "0" {
		t.Errorf("endpoint %v: want the public host and the replica's port", first["endpoint"])
	}
	again := must(t, srv, 200, "PUT", "/device/v1/tunnel", tok, map[string]any{"public_key": k2.PublicKey().String()})
	if again["address"] != first["address"] {
		t.Errorf("a new key moved the device from %v to %v", first["address"], again["address"])
	}

	other := newDevice(t)
	must(t, srv, 201, "POST", "/device/v1/register", "", other.registration(w.provKey))
	otherTok := other.token(t, srv)
	for _, c := range []struct {
		name, key string
		status    int
		code      string
	}{
		{"another device's key", k2.PublicKey().String(), 409, "public_key_in_use"},
		{"not a key", "c2hvcnQ=", 400, ""},
		{"the servers' own key", first["server_public_key"].(string), 400, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			status, _, out := call(t, srv, "PUT", "/device/v1/tunnel", otherTok, map[string]any{"public_key": c.key})
			if status != c.status || (c.code != "" && out["code"] != c.code) {
				t.Errorf("= %d %v, want %d %s", status, out, c.status, c.code)
			}
		})
	}
	// A person is not a device.
	if status, _, _ := call(t, srv, "PUT", "/device/v1/tunnel", w.owner, map[string]any{"public_key": k1.PublicKey().String()}); status != 401 {
		t.Errorf("a user registering a tunnel key = %d, want 401", status)
	}
}

// TestTunnelSessions opens tunnels to a device over real WireGuard (the
// process's tunnel replica and a wireguard-go client on netstack) and
// checks who may, the organisation's tunnel role, the session limit, the
// recorded sessions, and the public URL setting.
func TestTunnelSessions(t *testing.T) {
	srv := apptest.Start(t, "--tunnel-max-sessions-per-device=2")
	w := newWorld(t, srv).withFleet(t)
	tunnelDevice(t, w)

	// The device is routable once the replica saw its handshake.
	var first net.Conn
	testutil.Eventually(t, "a tunnel to the device", func() error {
		c, err := tunnelcli.Dial(t.Context(), tunnelcli.Options{API: srv.URL, Token: w.developer, Device: w.device.id.String(), Port: 7})
		if err != nil {
			return err
		}
		if err := echo(c, []byte("hello")); err != nil {
			c.Close()
			return err
		}
		first = c
		return nil
	})
	t.Cleanup(func() { _ = first.Close() })
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	if err := echo(first, big); err != nil {
		t.Fatalf("1 MiB through the tunnel: %v", err)
	}

	// A closed port: the reason in the close frame.
	if code, reason := closeReason(openTunnel(t, w, w.developer, 9)); code != 4502 || !strings.HasPrefix(reason, "port closed") {
		t.Errorf("tunnel to a closed port closed with %d %q, want 4502 port closed", code, reason)
	}

	// The device's limit is 2: a second holds, a third is refused.
	second := openTunnel(t, w, w.admin, 7)
	if err := echo(second, []byte("second")); err != nil {
		t.Fatal(err)
	}
	if code, reason := closeReason(openTunnel(t, w, w.owner, 7)); code != 4429 || !strings.HasPrefix(reason, "too many sessions") {
		t.Errorf("a third session closed with %d %q, want 4429 too many sessions", code, reason)
	}
	second.Close()
	testutil.Eventually(t, "the second session recorded as ended", testutil.Until(func() bool {
		items := must(t, srv, 200, "GET", "/v1/devices/"+w.device.id.String()+"/tunnel-sessions", w.viewer, nil)["items"].([]any)
		for _, it := range items {
			s := it.(map[string]any)
			if s["actor_label"] == "admin@example.com" && s["outcome"] == "closed" {
				return s["bytes_to_device"].(float64) == 6 && s["bytes_from_device"].(float64) == 6 && s["ended_at"] != nil
			}
		}
		return false
	}))
	if err := echo(openTunnel(t, w, w.owner, 7), []byte("third")); err != nil {
		t.Errorf("a session after one ended: %v", err)
	}

	// An admin raises the organisation's tunnel role: developers are
	// refused before the upgrade, admins still pass.
	org := must(t, srv, 200, "PATCH", "/v1/orgs/"+w.org, w.admin, map[string]any{"tunnel_min_role": "admin"})
	if org["tunnel_min_role"] != "admin" {
		t.Fatalf("org after the change: %v", org)
	}
	_, err := tunnelcli.Dial(t.Context(), tunnelcli.Options{API: srv.URL, Token: w.developer, Device: w.device.id.String(), Port: 7})
	var te *tunnelcli.Error
	if !errors.As(err, &te) || te.Status != 403 || !strings.Contains(te.Reason, "admin") {
		t.Errorf("developer after the change: %v, want 403 naming the admin role", err)
	}
	if status, _, _ := call(t, srv, "PATCH", "/v1/orgs/"+w.org, w.developer, map[string]any{"tunnel_min_role": "viewer"}); status != 403 {
		t.Errorf("a developer changing the tunnel role = %d, want 403", status)
	}

	// The public URL: off by default, a port in range, the URL on the
	// device once the deployment has a domain (dev mode: devices.localhost).
	dev := must(t, srv, 200, "GET", "/v1/devices/"+w.device.id.String(), w.viewer, nil)["public_url"].(map[string]any)
	if dev["enabled"] != false || dev["port"].(float64) != 80 {
		t.Errorf("public_url by default: %v", dev)
	}
	if status, _, _ := call(t, srv, "PATCH", "/v1/devices/"+w.device.id.String(), w.developer, map[string]any{"public_url": map[string]any{"port": 70000}}); status != 400 {
		t.Errorf("port 70000 = %d, want 400", status)
	}
	pu := must(t, srv, 200, "PATCH", "/v1/devices/"+w.device.id.String(), w.developer,
		map[string]any{"public_url": map[string]any{"enabled": true, "port": 8080}})["public_url"].(map[string]any)
	if pu["enabled"] != true || pu["port"].(float64) != 8080 || pu["url"] != "http://"+w.device.id.String()+".devices.localhost" {
		t.Errorf("public_url after enabling: %v", pu)
	}
	list := must(t, srv, 200, "GET", "/v1/orgs/"+w.org+"/devices", w.viewer, nil)["items"].([]any)
	if got := list[0].(map[string]any)["public_url"]; got.(map[string]any)["url"] != pu["url"] || got.(map[string]any)["enabled"] != true {
		t.Errorf("the device list shows public_url %v, want %v", got, pu)
	}

}
