package wgtunnel

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

// anyKey is a Lookup that enrols every key it is asked about, each at a new
// address, as a fleet of never-seen devices would look.
func anyKey() func(context.Context, Key) (Peer, error) {
	var n atomic.Uint64
	return func(_ context.Context, pub Key) (Peer, error) {
		i := n.Add(1)
		a := netip.MustParseAddr("fd66:6c6b::").As16()
		binary.BigEndian.PutUint64(a[8:], i+1)
		return Peer{Device: uuid.New(), PublicKey: pub, Address: netip.AddrFrom16(a)}, nil
	}
}

// initiator makes real wireguard-go handshake initiations for fresh keys
// without running a whole client per key.
type initiator struct {
	dev    *device.Device
	peer   *device.Peer
	opener *initiationOpener
}

func newInitiator(b *testing.B, serverPriv Key) *initiator {
	tdev, _, err := netstack.CreateNetTUN([]netip.Addr{overlays[0].device(0)}, nil, defaultMTU)
	if err != nil {
		b.Fatal(err)
	}
	dev := device.NewDevice(tdev, conn.NewStdNetBind(), device.NewLogger(device.LogLevelSilent, ""))
	b.Cleanup(dev.Close)
	k := mustKey(b)
	if err := dev.IpcSet("private_key=" + k.hex() + "\n"); err != nil {
		b.Fatal(err)
	}
	peer, err := dev.NewPeer(device.NoisePublicKey(serverPriv.PublicKey()))
	if err != nil {
		b.Fatal(err)
	}
	return &initiator{dev: dev, peer: peer, opener: newInitiationOpener(serverPriv)}
}

func (in *initiator) fresh() ([]byte, uint32, error) {
	k, err := GenerateKey()
	if err != nil {
		return nil, 0, err
	}
	if err := in.dev.IpcSet("private_key=" + k.hex() + "\n"); err != nil {
		return nil, 0, err
	}
	m, err := in.dev.CreateMessageInitiation(in.peer)
	if err != nil {
		return nil, 0, err
	}
	b := make([]byte, msgInitiationSize)
	binary.LittleEndian.PutUint32(b, m.Type)
	binary.LittleEndian.PutUint32(b[4:], m.Sender)
	copy(b[offEphemeral:], m.Ephemeral[:])
	copy(b[offStatic:], m.Static[:])
	copy(b[offTimestamp:], m.Timestamp[:])
	mac := in.opener.mac1(b)
	copy(b[offMAC1:], mac[:])
	return b, m.Sender, nil
}

// BenchmarkHandshakes measures handshakes one server completes for keys it
// has never seen: the full lazy path (mac1, static decryption, Lookup, peer
// add) plus wireguard-go's own responder work.
func BenchmarkHandshakes(b *testing.B) {
	serverPriv := mustKey(b)
	s := startServer(b, ServerConfig{PrivateKey: serverPriv, Lookup: anyKey(), pollInterval: time.Hour})
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		in := newInitiator(b, serverPriv)
		c, err := net.Dial("udp", endpoint(s))
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		buf := make([]byte, 256)
		for pb.Next() {
			msg, sender, err := in.fresh()
			if err != nil {
				b.Error(err)
				return
			}
			if _, err := c.Write(msg); err != nil {
				b.Error(err)
				return
			}
			for {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				n, err := c.Read(buf)
				if err != nil {
					b.Errorf("no handshake response: %v", err)
					return
				}
				// A response (type 2) addressed to this initiation.
				if n == 92 && buf[0] == 2 && binary.LittleEndian.Uint32(buf[8:]) == sender {
					break
				}
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
}

// BenchmarkIdlePeers reports the heap one configured, idle peer costs, which
// is what lazy adding saves per device that is not connected to a replica.
func BenchmarkIdlePeers(b *testing.B) {
	const peers = 2000
	var perPeer float64
	for range b.N {
		b.StopTimer()
		s := startServer(b, ServerConfig{Lookup: anyKey(), pollInterval: time.Hour})
		lookup := anyKey()
		var before, after runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		for range peers {
			p, _ := lookup(context.Background(), mustKey(b).PublicKey())
			if err := s.addPeer(p); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&after)
		perPeer = float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / peers
		runtime.KeepAlive(s)
		s.Close()
		b.StartTimer()
	}
	b.ReportMetric(perPeer, "bytes/peer")
}
