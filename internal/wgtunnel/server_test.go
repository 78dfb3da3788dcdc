package wgtunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// echo serves each connection on l by copying it back, half-closing at EOF.
func echo(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
			c.(closeWriter).CloseWrite()
		}()
	}
}

// roundTrip writes payload on c, half-closes, and returns what came back.
func roundTrip(c net.Conn, payload []byte) ([]byte, error) {
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		if err == nil {
			err = c.(closeWriter).CloseWrite()
		}
		werr <- err
	}()
	got, rerr := io.ReadAll(c)
	if err := <-werr; err != nil {
		return got, err
	}
	return got, rerr
}

func TestLazyPeerEcho(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			reg := newRegistry()
			var hs handshakes
			s := startServer(t, ServerConfig{Address: ov.server, Lookup: reg.Lookup, Handshake: hs.record})
			if got := s.Peers(); len(got) != 0 {
				t.Fatalf("fresh server has peers: %v", got)
			}
			peer, priv := enrol(t, reg, ov.device(0))
			c := startClient(t, s, priv, peer.Address)
			l, err := c.ListenTCP(7000)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go echo(l)

			waitFor(t, 20*time.Second, "lazy peer", func() bool { return s.Has(peer.Device) })
			waitFor(t, 20*time.Second, "Handshake callback", func() bool { return hs.count(peer.Device) > 0 })
			if c.LastHandshake().IsZero() {
				t.Error("client reports no handshake")
			}

			for _, tc := range []struct {
				name string
				size int
			}{{"small", 5}, {"10MB", 10 << 20}} {
				t.Run(tc.name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
					defer cancel()
					conn, err := s.DialTCP(ctx, peer.Device, 7000)
					if err != nil {
						t.Fatal(err)
					}
					defer conn.Close()
					conn.SetDeadline(time.Now().Add(2 * time.Minute))
					payload := make([]byte, tc.size)
					rand.Read(payload)
					got, err := roundTrip(conn, payload)
					if err != nil {
						t.Fatal(err)
					}
					if sha256.Sum256(got) != sha256.Sum256(payload) {
						t.Fatalf("echo mismatch: sent %d bytes, got %d", len(payload), len(got))
					}
				})
			}

			st := s.Peers()
			if len(st) != 1 || st[0].Device != peer.Device || st[0].Address != peer.Address {
				t.Fatalf("Peers() = %+v", st)
			}
			if st[0].RxBytes < 10<<20 || st[0].TxBytes < 10<<20 || st[0].LastHandshake.IsZero() {
				t.Errorf("peer stats not counted: %+v", st[0])
			}
			if got := testutil.ToFloat64(s.peers); got != 1 {
				t.Errorf("flock_tunnel_peers = %v, want 1", got)
			}
			if n := reg.callsFor(peer.PublicKey); n != 1 {
				t.Errorf("Lookup called %d times, want 1", n)
			}
		})
	}
}

// The static key our noise code recovers must be the one wireguard-go put in
// a real initiation.
func TestOpenStaticMatchesWireGuard(t *testing.T) {
	serverPriv, clientPriv := mustKey(t), mustKey(t)
	msg := captureInitiation(t, clientPriv, serverPriv.PublicKey())
	o := newInitiationOpener(serverPriv)

	tamper := func(off int, fixMAC bool) []byte {
		m := bytes.Clone(msg)
		m[off] ^= 1
		if fixMAC {
			mac := o.mac1(m)
			copy(m[offMAC1:offMAC2], mac[:])
		}
		return m
	}
	for _, tc := range []struct {
		name   string
		opener *initiationOpener
		msg    []byte
		want   error
	}{
		{"genuine", o, msg, nil},
		{"mac2 is not checked", o, tamper(offMAC2, false), nil},
		{"bad mac1", o, tamper(offMAC1, false), errBadMAC},
		{"static tampered under mac1", o, tamper(offStatic+3, false), errBadMAC},
		{"static tampered, mac1 recomputed", o, tamper(offStatic+3, true), errBadStatic},
		{"ephemeral tampered, mac1 recomputed", o, tamper(offEphemeral, true), errBadStatic},
		{"other server", newInitiationOpener(mustKey(t)), msg, errBadMAC},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.opener.openStatic(tc.msg)
			if !errors.Is(err, tc.want) {
				t.Fatalf("openStatic error = %v, want %v", err, tc.want)
			}
			if err == nil && got != clientPriv.PublicKey() {
				t.Fatalf("static = %s, want %s", got, clientPriv.PublicKey())
			}
		})
	}
}

func TestUnknownKeyDropped(t *testing.T) {
	reg := newRegistry()
	promReg := prometheus.NewRegistry()
	s := startServer(t, ServerConfig{Lookup: reg.Lookup, Registerer: promReg})
	stranger := mustKey(t)
	msg := captureInitiation(t, stranger, s.PublicKey())
	dropped := func(reason string) float64 { return testutil.ToFloat64(s.dropped.WithLabelValues(reason)) }

	sendUDP(t, s, msg)
	waitFor(t, 10*time.Second, "first unknown_key drop", func() bool { return dropped("unknown_key") == 1 })
	// Within the negative-cache time the database is not asked again.
	sendUDP(t, s, msg, msg, msg, msg, msg)
	waitFor(t, 10*time.Second, "cached unknown_key drops", func() bool { return dropped("unknown_key") == 6 })
	if n := reg.callsFor(stranger.PublicKey()); n != 1 {
		t.Errorf("Lookup called %d times for the same key, want 1", n)
	}

	garbage := bytes.Clone(msg)
	garbage[offMAC1] ^= 0xff
	sendUDP(t, s, garbage)
	waitFor(t, 10*time.Second, "bad_mac drop", func() bool { return dropped("bad_mac") == 1 })

	badStatic := bytes.Clone(msg)
	badStatic[offStatic] ^= 0xff
	mac := s.opener.mac1(badStatic)
	copy(badStatic[offMAC1:offMAC2], mac[:])
	sendUDP(t, s, badStatic)
	waitFor(t, 10*time.Second, "bad_static drop", func() bool { return dropped("bad_static") == 1 })

	if s.Has(Peer{}.Device) || len(s.Peers()) != 0 {
		t.Fatal("an unknown key produced a peer")
	}
	if n, err := testutil.GatherAndCount(promReg, "flock_tunnel_handshakes_dropped_total", "flock_tunnel_peers"); err != nil || n == 0 {
		t.Fatalf("metrics not registered: n=%d err=%v", n, err)
	}
}

func TestNegativeCacheExpires(t *testing.T) {
	reg := newRegistry()
	s := startServer(t, ServerConfig{Lookup: reg.Lookup, negativeTTL: 100 * time.Millisecond})
	priv := mustKey(t)
	msg := captureInitiation(t, priv, s.PublicKey())
	sendUDP(t, s, msg)
	waitFor(t, 10*time.Second, "first lookup", func() bool { return reg.callsFor(priv.PublicKey()) == 1 })
	// Once the entry expires, a retransmission is looked up again.
	deadline := time.Now().Add(10 * time.Second)
	for reg.callsFor(priv.PublicKey()) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("Lookup not retried after the negative cache expired")
		}
		sendUDP(t, s, msg)
		time.Sleep(50 * time.Millisecond)
	}
}

// The server's netstack must not route one device's packets to another.
func TestNoDeviceToDevice(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			reg := newRegistry()
			s := startServer(t, ServerConfig{Address: ov.server, Lookup: reg.Lookup})
			pa, privA := enrol(t, reg, ov.device(0))
			pb, privB := enrol(t, reg, ov.device(1))
			a := startClient(t, s, privA, pa.Address)
			b := startClient(t, s, privB, pb.Address)
			for _, c := range []*Client{a, b} {
				l, err := c.ListenTCP(22)
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				go echo(l)
			}
			waitFor(t, 20*time.Second, "both peers", func() bool { return s.Has(pa.Device) && s.Has(pb.Device) })

			// The server reaches both devices.
			for _, p := range []Peer{pa, pb} {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				conn, err := s.DialTCP(ctx, p.Device, 22)
				cancel()
				if err != nil {
					t.Fatalf("server to %s: %v", p.Address, err)
				}
				conn.SetDeadline(time.Now().Add(20 * time.Second))
				if got, err := roundTrip(conn, []byte("hi")); err != nil || string(got) != "hi" {
					t.Fatalf("server to %s: got %q, %v", p.Address, got, err)
				}
				conn.Close()
			}

			for _, tc := range []struct {
				name     string
				from     *Client
				fromPeer Peer
				to       netip.AddrPort
				reached  bool // a reset from the server's stack still proves the packet arrived
			}{
				{"A to server", a, pa, netip.AddrPortFrom(ov.server, 22), true},
				{"B to server", b, pb, netip.AddrPortFrom(ov.server, 22), true},
				{"A to B", a, pa, netip.AddrPortFrom(pb.Address, 22), false},
				{"B to A", b, pb, netip.AddrPortFrom(pa.Address, 22), false},
			} {
				t.Run(tc.name, func(t *testing.T) {
					rxBefore := rxOf(s, tc.fromPeer)
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					defer cancel()
					conn, err := tc.from.DialTCP(ctx, tc.to)
					if err == nil {
						conn.Close()
						t.Fatalf("dial %s succeeded; the server serves nothing and must not forward", tc.to)
					}
					timedOut := errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil
					if tc.reached == timedOut {
						t.Fatalf("dial %s: %v (want reached=%v)", tc.to, err, tc.reached)
					}
					// The SYNs did cross the tunnel, so it is the server that drops them.
					if rx := rxOf(s, tc.fromPeer); rx <= rxBefore {
						t.Fatalf("server received nothing from %s (rx %d -> %d)", tc.fromPeer.Address, rxBefore, rx)
					}
				})
			}
		})
	}
}

func rxOf(s *Server, p Peer) uint64 {
	for _, st := range s.Peers() {
		if st.Device == p.Device {
			return st.RxBytes
		}
	}
	return 0
}

// closeWriter is a connection that can end its sending half.
type closeWriter interface{ CloseWrite() error }
