package wgtunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

const defaultKeepalive = 25 * time.Second

// ClientConfig configures the device side of the overlay.
type ClientConfig struct {
	PrivateKey      Key
	Address         netip.Addr // the device's overlay address
	ServerPublicKey Key
	Endpoint        string // host:port UDP of a tunnel replica
	ServerAddress   netip.Addr
	Keepalive       time.Duration // default 25 s
	MTU             int           // default 1420
	Log             *slog.Logger
}

// Client is a device's end of the overlay: a WireGuard device with one peer,
// the tunnel service, on a private netstack.
type Client struct {
	cfg  ClientConfig
	dev  *device.Device
	tnet *netstack.Net
	once sync.Once
}

// NewClient brings the tunnel up; the first handshake starts at once because
// of the persistent keepalive.
func NewClient(ctx context.Context, cfg ClientConfig) (*Client, error) {
	if cfg.PrivateKey.IsZero() || cfg.ServerPublicKey.IsZero() {
		return nil, errors.New("wgtunnel: client: private and server public keys required")
	}
	if !cfg.Address.IsValid() || !cfg.ServerAddress.IsValid() {
		return nil, errors.New("wgtunnel: client: overlay addresses required")
	}
	if cfg.Keepalive == 0 {
		cfg.Keepalive = defaultKeepalive
	}
	if cfg.MTU == 0 {
		cfg.MTU = defaultMTU
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "wgtunnel.client")
	tdev, tnet, err := netstack.CreateNetTUN([]netip.Addr{cfg.Address}, nil, cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("wgtunnel: client: netstack: %w", err)
	}
	c := &Client{cfg: cfg, tnet: tnet}
	c.dev = device.NewDevice(tdev, conn.NewStdNetBind(), wgLogger(log))
	peer, err := c.peerConfig(ctx, cfg.Endpoint)
	if err != nil {
		c.dev.Close()
		return nil, err
	}
	if err := c.dev.IpcSet("private_key=" + cfg.PrivateKey.hex() + "\n" + peer); err != nil {
		c.dev.Close()
		return nil, fmt.Errorf("wgtunnel: client: configure device: %w", err)
	}
	if err := c.dev.Up(); err != nil {
		c.dev.Close()
		return nil, fmt.Errorf("wgtunnel: client: bring device up: %w", err)
	}
	return c, nil
}

// overlayPrefix routes the whole overlay to the server, so traffic to another
// device's address does reach the server (which must and does drop it)
// rather than failing locally and hiding a forwarding bug.
func overlayPrefix(server netip.Addr) netip.Prefix {
	bits := 64
	if server.Is4() {
		bits = 10
	}
	return netip.PrefixFrom(server, bits).Masked()
}

func (c *Client) peerConfig(ctx context.Context, endpoint string) (string, error) {
	// wireguard-go only parses literal ip:port.
	host, port, err := net.SplitHostPort(endpoint)
	if err != nil {
		return "", fmt.Errorf("wgtunnel: client: endpoint %q: %w", endpoint, err)
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return "", fmt.Errorf("wgtunnel: client: resolve endpoint %q: %w", endpoint, err)
	}
	ep := net.JoinHostPort(ips[0].Unmap().String(), port)
	return fmt.Sprintf("public_key=%s\nendpoint=%s\nreplace_allowed_ips=true\nallowed_ip=%s\npersistent_keepalive_interval=%d\n",
		c.cfg.ServerPublicKey.hex(), ep, overlayPrefix(c.cfg.ServerAddress),
		int(c.cfg.Keepalive.Round(time.Second)/time.Second)), nil
}

// SetEndpoint points the client at another replica (or the same one again)
// and starts a fresh handshake at once. Merely changing the endpoint would
// keep sending on the old session, which the new replica cannot decrypt, and
// wireguard-go would not rehandshake for up to two minutes.
func (c *Client) SetEndpoint(ctx context.Context, endpoint string) error {
	peer, err := c.peerConfig(ctx, endpoint)
	if err != nil {
		return err
	}
	if err := c.dev.IpcSet("public_key=" + c.cfg.ServerPublicKey.hex() + "\nremove=true\n" + peer); err != nil {
		return fmt.Errorf("wgtunnel: client: set endpoint %s: %w", endpoint, err)
	}
	return nil
}

// ListenTCP listens on the device's overlay address.
func (c *Client) ListenTCP(port uint16) (net.Listener, error) {
	l, err := c.tnet.ListenTCPAddrPort(netip.AddrPortFrom(c.cfg.Address, port))
	if err != nil {
		return nil, fmt.Errorf("wgtunnel: client: listen on overlay port %d: %w", port, err)
	}
	return l, nil
}

// DialTCP connects through the tunnel.
func (c *Client) DialTCP(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	conn, err := c.tnet.DialContextTCPAddrPort(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("wgtunnel: client: dial %s: %w", addr, err)
	}
	return conn, nil
}

// LastHandshake is when the current session with the server was established;
// zero before the first handshake.
func (c *Client) LastHandshake() time.Time {
	dump, err := c.dev.IpcGet()
	if err != nil {
		return time.Time{}
	}
	return parseStats(dump)[c.cfg.ServerPublicKey].handshake
}

// Close tears the tunnel down.
func (c *Client) Close() error {
	c.once.Do(c.dev.Close)
	return nil
}
