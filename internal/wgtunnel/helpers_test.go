package wgtunnel

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

func testLog() *slog.Logger {
	if os.Getenv("WGTUNNEL_DEBUG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// registry stands in for the device database behind Lookup.
type registry struct {
	mu    sync.Mutex
	peers map[Key]Peer
	calls map[Key]int
}

func newRegistry() *registry { return &registry{peers: map[Key]Peer{}, calls: map[Key]int{}} }

func (r *registry) Lookup(_ context.Context, pub Key) (Peer, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[pub]++
	p, ok := r.peers[pub]
	if !ok {
		return Peer{}, ErrUnknownPeer
	}
	return p, nil
}

func (r *registry) add(p Peer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.peers[p.PublicKey] = p
}

func (r *registry) forget(pub Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.peers, pub)
}

func (r *registry) callsFor(pub Key) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[pub]
}

// handshakes records Handshake callbacks.
type handshakes struct {
	mu   sync.Mutex
	seen map[uuid.UUID]int
}

func (h *handshakes) record(p Peer, _ time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen == nil {
		h.seen = map[uuid.UUID]int{}
	}
	h.seen[p.Device]++
}

func (h *handshakes) count(d uuid.UUID) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seen[d]
}

type overlay struct {
	name   string
	server netip.Addr
	device func(i int) netip.Addr
}

var overlays = []overlay{
	{"ipv6", netip.MustParseAddr("fd66:6c6b::1"), func(i int) netip.Addr {
		a := netip.MustParseAddr("fd66:6c6b::").As16()
		a[14], a[15] = byte((i+2)>>8), byte(i+2)
		return netip.AddrFrom16(a)
	}},
	{"ipv4", netip.MustParseAddr("100.64.0.1"), func(i int) netip.Addr {
		return netip.AddrFrom4([4]byte{100, 64, byte((i + 2) >> 8), byte(i + 2)})
	}},
}

func mustKey(t testing.TB) Key {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func startServer(t testing.TB, cfg ServerConfig) *Server {
	t.Helper()
	if cfg.PrivateKey.IsZero() {
		cfg.PrivateKey = mustKey(t)
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if !cfg.Address.IsValid() {
		cfg.Address = overlays[0].server
	}
	if cfg.Log == nil {
		cfg.Log = testLog()
	}
	if cfg.pollInterval == 0 {
		cfg.pollInterval = 50 * time.Millisecond
	}
	s, err := NewServer(context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func endpoint(s *Server) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port())) }

func startClient(t testing.TB, s *Server, priv Key, addr netip.Addr) *Client {
	t.Helper()
	c, err := NewClient(context.Background(), ClientConfig{
		PrivateKey:      priv,
		Address:         addr,
		ServerPublicKey: s.PublicKey(),
		Endpoint:        endpoint(s),
		ServerAddress:   s.cfg.Address,
		Log:             testLog(),
	})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// enrol registers a new device with the registry and returns its peer and
// private key.
func enrol(t testing.TB, r *registry, addr netip.Addr) (Peer, Key) {
	t.Helper()
	priv := mustKey(t)
	p := Peer{Device: uuid.New(), PublicKey: priv.PublicKey(), Address: addr}
	r.add(p)
	return p, priv
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// captureInitiation returns a handshake initiation produced by wireguard-go
// for a client with key priv talking to a server whose public key is
// serverPub, by pointing the client at a plain UDP socket.
func captureInitiation(t testing.TB, priv, serverPub Key) []byte {
	t.Helper()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := NewClient(context.Background(), ClientConfig{
		PrivateKey:      priv,
		Address:         overlays[0].device(0),
		ServerPublicKey: serverPub,
		Endpoint:        pc.LocalAddr().String(),
		ServerAddress:   overlays[0].server,
		Log:             testLog(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pc.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 2048)
	for {
		n, _, err := pc.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("waiting for the client's initiation: %v", err)
		}
		if isInitiation(buf[:n]) {
			return append([]byte(nil), buf[:n]...)
		}
	}
}

func sendUDP(t testing.TB, s *Server, msgs ...[]byte) {
	t.Helper()
	c, err := net.Dial("udp", endpoint(s))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, m := range msgs {
		if _, err := c.Write(m); err != nil {
			t.Fatal(err)
		}
	}
}
