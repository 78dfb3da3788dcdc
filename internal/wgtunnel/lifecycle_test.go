package wgtunnel

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRemovePeer(t *testing.T) {
	for _, tc := range []struct {
		name         string
		stillEnroled bool
	}{
		{"lookup still knows the key", true},
		{"key revoked", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := newRegistry()
			s := startServer(t, ServerConfig{Lookup: reg.Lookup})
			peer, priv := enrol(t, reg, overlays[0].device(0))
			c := startClient(t, s, priv, peer.Address)
			l, err := c.ListenTCP(22)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go echo(l)
			waitFor(t, 20*time.Second, "peer", func() bool { return s.Has(peer.Device) })

			if !s.RemovePeer(peer.Device) {
				t.Fatal("RemovePeer = false for a present peer")
			}
			if s.RemovePeer(peer.Device) {
				t.Fatal("RemovePeer = true twice")
			}
			if _, err := s.DialTCP(context.Background(), peer.Device, 22); !errors.Is(err, ErrNoPeer) {
				t.Fatalf("DialTCP after RemovePeer: %v, want ErrNoPeer", err)
			}
			if got := testutil.ToFloat64(s.peers); got != 0 {
				t.Fatalf("flock_tunnel_peers = %v, want 0", got)
			}

			if !tc.stillEnroled {
				reg.forget(peer.PublicKey)
			}
			// The client's next handshake: forced, because wireguard-go would
			// only rekey on its own after two minutes.
			if err := c.SetEndpoint(context.Background(), endpoint(s)); err != nil {
				t.Fatal(err)
			}
			if tc.stillEnroled {
				waitFor(t, 20*time.Second, "peer back", func() bool { return s.Has(peer.Device) })
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				conn, err := s.DialTCP(ctx, peer.Device, 22)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				if got, err := roundTrip(conn, []byte("back")); err != nil || string(got) != "back" {
					t.Fatalf("after re-handshake: %q, %v", got, err)
				}
				return
			}
			waitFor(t, 20*time.Second, "unknown key drop", func() bool {
				return testutil.ToFloat64(s.dropped.WithLabelValues("unknown_key")) >= 1
			})
			if s.Has(peer.Device) {
				t.Fatal("revoked key got its peer back")
			}
		})
	}
}

// Two replicas share a private key; a device's peer follows it to the one it
// handshakes with.
func TestReplicaSwitch(t *testing.T) {
	reg := newRegistry()
	priv := mustKey(t)
	var hsA, hsB handshakes
	a := startServer(t, ServerConfig{PrivateKey: priv, Lookup: reg.Lookup, Handshake: hsA.record})
	b := startServer(t, ServerConfig{PrivateKey: priv, Lookup: reg.Lookup, Handshake: hsB.record, IdleAfter: time.Hour})
	peer, devPriv := enrol(t, reg, overlays[0].device(0))
	c := startClient(t, a, devPriv, peer.Address)
	l, err := c.ListenTCP(22)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go echo(l)

	waitFor(t, 20*time.Second, "handshake on A", func() bool { return a.Has(peer.Device) && hsA.count(peer.Device) > 0 })
	if b.Has(peer.Device) {
		t.Fatal("B holds a peer it never saw")
	}

	if err := c.SetEndpoint(context.Background(), endpoint(b)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "handshake on B", func() bool { return b.Has(peer.Device) && hsB.count(peer.Device) > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := b.DialTCP(ctx, peer.Device, 22)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got, err := roundTrip(conn, []byte("via B")); err != nil || string(got) != "via B" {
		t.Fatalf("through B: %q, %v", got, err)
	}
	// A keeps the stale peer until the platform removes it or it idles out.
	if !a.RemovePeer(peer.Device) {
		t.Error("A lost the peer on its own")
	}
}

func TestIdlePeerRemoved(t *testing.T) {
	reg := newRegistry()
	s := startServer(t, ServerConfig{Lookup: reg.Lookup, IdleAfter: 500 * time.Millisecond})
	peer, priv := enrol(t, reg, overlays[0].device(0))
	startClient(t, s, priv, peer.Address)
	waitFor(t, 20*time.Second, "peer", func() bool { return s.Has(peer.Device) })
	waitFor(t, 20*time.Second, "idle removal", func() bool { return !s.Has(peer.Device) })
}

// A device that re-registers with a new key keeps its address; the old key's
// peer must go so the address routes to the new one.
func TestReRegistrationReplacesPeer(t *testing.T) {
	reg := newRegistry()
	s := startServer(t, ServerConfig{Lookup: reg.Lookup})
	old, oldPriv := enrol(t, reg, overlays[0].device(0))
	c1 := startClient(t, s, oldPriv, old.Address)
	waitFor(t, 20*time.Second, "old peer", func() bool { return s.Has(old.Device) })
	c1.Close()

	newPriv := mustKey(t)
	renewed := old
	renewed.PublicKey = newPriv.PublicKey()
	reg.forget(old.PublicKey)
	reg.add(renewed)
	c2 := startClient(t, s, newPriv, renewed.Address)
	l, err := c2.ListenTCP(22)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go echo(l)
	waitFor(t, 20*time.Second, "renewed peer", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.byDevice[old.Device] == renewed.PublicKey
	})
	if st := s.Peers(); len(st) != 1 {
		t.Fatalf("Peers() = %+v, want only the renewed peer", st)
	}
	if _, ok := parseStats(mustIpcGet(t, s))[old.PublicKey]; ok {
		t.Fatal("old key still configured in wireguard-go")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := s.DialTCP(ctx, old.Device, 22)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if got, err := roundTrip(conn, []byte("new key")); err != nil || string(got) != "new key" {
		t.Fatalf("to renewed device: %q, %v", got, err)
	}
}

func mustIpcGet(t *testing.T, s *Server) string {
	t.Helper()
	d, err := s.dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Forward exposes a local TCP service (sshd in the simulator) on an overlay
// port; half-closes must pass through so request/response protocols end.
func TestForward(t *testing.T) {
	reg := newRegistry()
	s := startServer(t, ServerConfig{Lookup: reg.Lookup})
	peer, priv := enrol(t, reg, overlays[0].device(0))
	c := startClient(t, s, priv, peer.Address)

	local, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	// A service that answers only after its input ends, like scp's sink.
	go func() {
		for {
			conn, err := local.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				in, _ := io.ReadAll(conn)
				conn.Write(append([]byte("got:"), in...))
			}()
		}
	}()

	l, err := c.ListenTCP(22)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Forward(ctx, l, local.Addr().String()) }()

	waitFor(t, 20*time.Second, "peer", func() bool { return s.Has(peer.Device) })
	for _, msg := range []string{"one", "two"} {
		dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Second)
		conn, err := s.DialTCP(dctx, peer.Device, 22)
		dcancel()
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(20 * time.Second))
		got, err := roundTrip(conn, []byte(msg))
		conn.Close()
		if err != nil || string(got) != "got:"+msg {
			t.Fatalf("forwarded %q: got %q, %v", msg, got, err)
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Forward returned %v after cancel", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Forward did not return after cancel")
	}
}
