package wgtunnel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"
)

var (
	// ErrUnknownPeer is what Lookup returns when no device has the key.
	ErrUnknownPeer = errors.New("wgtunnel: unknown peer")
	// ErrNoPeer means the device has no peer on this server (it has not
	// handshaken here, or was removed).
	ErrNoPeer = errors.New("wgtunnel: device has no peer on this server")
)

const (
	defaultMTU       = 1420
	defaultIdleAfter = 3 * time.Minute
	defaultPoll      = time.Second
	defaultNegTTL    = 10 * time.Second
	// A failing Lookup (database down) is retried sooner than an unknown key
	// is, but still not per packet.
	lookupErrorTTL = 2 * time.Second
	lookupTimeout  = 5 * time.Second
	maxLookups     = 32
	maxNegative    = 1 << 16
)

// Peer is a device as the overlay sees it.
type Peer struct {
	Device    uuid.UUID
	PublicKey Key
	Address   netip.Addr
}

// PeerStatus is a peer's state on this server.
type PeerStatus struct {
	Device        uuid.UUID
	Address       netip.Addr
	LastHandshake time.Time // zero until the first handshake completes
	RxBytes       uint64
	TxBytes       uint64
}

// ServerConfig configures one tunnel replica.
type ServerConfig struct {
	PrivateKey Key
	// Listen is the UDP address. Only the port is honoured: wireguard-go's
	// standard bind listens on all addresses.
	Listen string
	// Address is the server's own overlay address.
	Address netip.Addr
	MTU     int // default 1420
	// Lookup resolves the static public key of a handshake initiation from a
	// key this server has no peer for. Return ErrUnknownPeer when no device
	// has that key: the packet is dropped and counted.
	Lookup func(ctx context.Context, pub Key) (Peer, error)
	// Handshake is called, from a goroutine the server owns, when a peer
	// completes a new handshake.
	Handshake func(p Peer, at time.Time)
	// IdleAfter removes a peer with no handshake for this long (default 3
	// min: WireGuard rejects sessions older than 180 s anyway).
	IdleAfter  time.Duration
	Log        *slog.Logger
	Registerer prometheus.Registerer // may be nil

	// Test hooks: how often peer state is polled and how long an unknown key
	// is remembered.
	pollInterval time.Duration
	negativeTTL  time.Duration
}

type peerState struct {
	Peer
	added         time.Time
	lastHandshake time.Time
}

type pendingLookup struct {
	packet []byte
	ep     conn.Endpoint
}

type datagram struct {
	packet []byte
	ep     conn.Endpoint
}

// Server is one tunnel replica.
type Server struct {
	cfg    ServerConfig
	log    *slog.Logger
	opener *initiationOpener
	dev    *device.Device
	tnet   *netstack.Net
	port   atomic.Uint32

	ctx       context.Context
	cancel    context.CancelFunc
	stopAfter func() bool
	wg        sync.WaitGroup

	// cfgMu serialises changes to wireguard-go's peer set with the maps
	// below, so a removal and a lazy add of the same key cannot interleave.
	cfgMu sync.Mutex

	mu       sync.Mutex
	closed   bool
	byKey    map[Key]*peerState
	byDevice map[uuid.UUID]Key
	byAddr   map[netip.Addr]Key
	negative map[Key]time.Time
	pending  map[Key]*pendingLookup

	lookupSem chan struct{}
	reinject  chan datagram

	dropped *prometheus.CounterVec
	peers   prometheus.Gauge
}

// NewServer starts a replica listening on cfg.Listen. It runs until Close or
// until ctx is cancelled.
func NewServer(ctx context.Context, cfg ServerConfig) (*Server, error) {
	if cfg.PrivateKey.IsZero() {
		return nil, errors.New("wgtunnel: server: private key required")
	}
	if !cfg.Address.IsValid() {
		return nil, errors.New("wgtunnel: server: overlay address required")
	}
	if cfg.Lookup == nil {
		return nil, errors.New("wgtunnel: server: Lookup required")
	}
	port, err := listenPort(cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("wgtunnel: server: %w", err)
	}
	if cfg.MTU == 0 {
		cfg.MTU = defaultMTU
	}
	if cfg.IdleAfter == 0 {
		cfg.IdleAfter = defaultIdleAfter
	}
	if cfg.pollInterval == 0 {
		cfg.pollInterval = defaultPoll
	}
	if cfg.negativeTTL == 0 {
		cfg.negativeTTL = defaultNegTTL
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "wgtunnel.server")

	s := &Server{
		cfg:       cfg,
		log:       log,
		opener:    newInitiationOpener(cfg.PrivateKey),
		byKey:     map[Key]*peerState{},
		byDevice:  map[uuid.UUID]Key{},
		byAddr:    map[netip.Addr]Key{},
		negative:  map[Key]time.Time{},
		pending:   map[Key]*pendingLookup{},
		lookupSem: make(chan struct{}, maxLookups),
		reinject:  make(chan datagram, maxLookups),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flock_tunnel_handshakes_dropped_total",
			Help: "Handshake initiations dropped before reaching WireGuard, by reason.",
		}, []string{"reason"}),
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flock_tunnel_peers",
			Help: "WireGuard peers configured on this tunnel replica.",
		}),
	}
	for _, r := range []string{"unknown_key", "bad_mac", "bad_static", "lookup_error", "overload"} {
		s.dropped.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.dropped, s.peers} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("wgtunnel: server: register metrics: %w", err)
			}
		}
	}

	tdev, tnet, err := netstack.CreateNetTUN([]netip.Addr{cfg.Address}, nil, cfg.MTU)
	if err != nil {
		return nil, fmt.Errorf("wgtunnel: server: netstack: %w", err)
	}
	s.tnet = tnet
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.dev = device.NewDevice(tdev, &lazyBind{Bind: conn.NewStdNetBind(), s: s}, wgLogger(log))
	if err := s.dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", cfg.PrivateKey.hex(), port)); err != nil {
		s.dev.Close()
		s.cancel()
		return nil, fmt.Errorf("wgtunnel: server: configure device: %w", err)
	}
	if err := s.dev.Up(); err != nil {
		s.dev.Close()
		s.cancel()
		return nil, fmt.Errorf("wgtunnel: server: bring device up: %w", err)
	}
	s.wg.Add(1)
	go s.watch()
	// The server's lifetime is Close, but a cancelled parent should not leak it.
	s.stopAfter = context.AfterFunc(ctx, func() { _ = s.Close() })
	log.Info("tunnel server up", "port", s.Port(), "address", cfg.Address, "public_key", s.PublicKey().String())
	return s, nil
}

func listenPort(listen string) (uint16, error) {
	if listen == "" {
		return 0, nil
	}
	_, p, err := net.SplitHostPort(listen)
	if err != nil {
		return 0, fmt.Errorf("listen address %q: %w", listen, err)
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("listen port %q: %w", p, err)
	}
	return uint16(n), nil
}

// Close stops the replica; its peers are gone with it.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	if s.stopAfter != nil {
		s.stopAfter()
	}
	s.cancel()
	s.dev.Close()
	s.wg.Wait()
	return nil
}

// Port is the bound UDP port.
func (s *Server) Port() int { return int(s.port.Load()) }

// PublicKey is the replica's (shared) public key.
func (s *Server) PublicKey() Key { return s.cfg.PrivateKey.PublicKey() }

// Has reports whether the device's peer is on this server.
func (s *Server) Has(dev uuid.UUID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.byDevice[dev]
	return ok
}

// DialTCP opens a TCP connection to a port on the device's overlay address.
func (s *Server) DialTCP(ctx context.Context, dev uuid.UUID, port uint16) (net.Conn, error) {
	s.mu.Lock()
	var addr netip.Addr
	if k, ok := s.byDevice[dev]; ok {
		addr = s.byKey[k].Address
	}
	s.mu.Unlock()
	if !addr.IsValid() {
		return nil, fmt.Errorf("wgtunnel: dial %s:%d: %w", dev, port, ErrNoPeer)
	}
	c, err := s.tnet.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(addr, port))
	if err != nil {
		return nil, fmt.Errorf("wgtunnel: dial device %s at %s: %w", dev, netip.AddrPortFrom(addr, port), err)
	}
	return c, nil
}

// RemovePeer drops the device's peer; it comes back on its next handshake if
// Lookup still knows its key.
func (s *Server) RemovePeer(dev uuid.UUID) bool {
	s.cfgMu.Lock()
	defer s.cfgMu.Unlock()
	s.mu.Lock()
	k, ok := s.byDevice[dev]
	if ok {
		s.forgetLocked(k)
	}
	s.mu.Unlock()
	if !ok {
		return false
	}
	if err := s.dev.IpcSet("public_key=" + k.hex() + "\nremove=true\n"); err != nil {
		s.log.Warn("remove peer", "device", dev, "err", err)
	}
	return true
}

func (s *Server) forgetLocked(k Key) {
	st, ok := s.byKey[k]
	if !ok {
		return
	}
	delete(s.byKey, k)
	if s.byDevice[st.Device] == k {
		delete(s.byDevice, st.Device)
	}
	if s.byAddr[st.Address] == k {
		delete(s.byAddr, st.Address)
	}
	s.peers.Set(float64(len(s.byKey)))
}

// Peers reports every peer on this server, read fresh from WireGuard.
func (s *Server) Peers() []PeerStatus {
	stats, err := s.readStats()
	if err != nil {
		s.log.Warn("read peer stats", "err", err)
	}
	s.mu.Lock()
	out := make([]PeerStatus, 0, len(s.byKey))
	for k, st := range s.byKey {
		ps := PeerStatus{Device: st.Device, Address: st.Address, LastHandshake: st.lastHandshake}
		if w, ok := stats[k]; ok {
			ps.RxBytes, ps.TxBytes = w.rx, w.tx
			if w.handshake.After(ps.LastHandshake) {
				ps.LastHandshake = w.handshake
			}
		}
		out = append(out, ps)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b PeerStatus) int { return strings.Compare(a.Device.String(), b.Device.String()) })
	return out
}

// admit decides, on the packet path, whether a handshake initiation may go on
// to wireguard-go. Unknown keys are parked while Lookup runs elsewhere, so a
// slow database never stalls the receive loop.
func (s *Server) admit(msg []byte, ep conn.Endpoint) bool {
	pub, err := s.opener.openStatic(msg)
	switch {
	case errors.Is(err, errBadMAC):
		s.dropped.WithLabelValues("bad_mac").Inc()
		return false
	case err != nil:
		s.dropped.WithLabelValues("bad_static").Inc()
		return false
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.byKey[pub]; ok {
		return true
	}
	if s.closed {
		return false
	}
	if exp, ok := s.negative[pub]; ok {
		if now.Before(exp) {
			s.dropped.WithLabelValues("unknown_key").Inc()
			return false
		}
		delete(s.negative, pub)
	}
	if p, ok := s.pending[pub]; ok {
		// The initiator retransmits with a fresh ephemeral; answer the latest.
		p.packet, p.ep = slices.Clone(msg), ep
		return false
	}
	select {
	case s.lookupSem <- struct{}{}:
	default:
		s.dropped.WithLabelValues("overload").Inc()
		return false
	}
	s.pending[pub] = &pendingLookup{packet: slices.Clone(msg), ep: ep}
	s.wg.Add(1)
	go s.lookup(pub)
	return false
}

func (s *Server) lookup(pub Key) {
	defer s.wg.Done()
	defer func() { <-s.lookupSem }()
	ctx, cancel := context.WithTimeout(s.ctx, lookupTimeout)
	p, err := s.cfg.Lookup(ctx, pub)
	cancel()
	if err == nil && p.PublicKey != pub {
		err = fmt.Errorf("lookup returned key %s for %s", p.PublicKey, pub)
	}
	if err == nil && !p.Address.IsValid() {
		err = fmt.Errorf("lookup returned no address for device %s", p.Device)
	}
	if err == nil {
		err = s.addPeer(p)
	}
	s.mu.Lock()
	pend := s.pending[pub]
	delete(s.pending, pub)
	if err != nil {
		ttl := s.cfg.negativeTTL
		if !errors.Is(err, ErrUnknownPeer) {
			ttl = lookupErrorTTL
		}
		s.rememberUnknownLocked(pub, time.Now().Add(ttl))
	}
	s.mu.Unlock()
	switch {
	case errors.Is(err, ErrUnknownPeer):
		s.dropped.WithLabelValues("unknown_key").Inc()
		s.log.Debug("handshake from unknown key", "public_key", pub.String())
		return
	case err != nil:
		s.dropped.WithLabelValues("lookup_error").Inc()
		s.log.Warn("peer lookup failed", "public_key", pub.String(), "err", err)
		return
	}
	select {
	case s.reinject <- datagram{packet: pend.packet, ep: pend.ep}:
	case <-s.ctx.Done():
	}
}

func (s *Server) rememberUnknownLocked(pub Key, until time.Time) {
	if len(s.negative) >= maxNegative {
		now := time.Now()
		for k, exp := range s.negative {
			if now.After(exp) {
				delete(s.negative, k)
			}
		}
		// A flood of distinct keys: forgetting some early only costs lookups,
		// which lookupSem bounds anyway.
		for k := range s.negative {
			if len(s.negative) < maxNegative {
				break
			}
			delete(s.negative, k)
		}
	}
	s.negative[pub] = until
}

// addPeer configures p in wireguard-go. A device that re-registered with a new
// key, or another device now holding the address, loses its old peer first so
// allowed IPs stay unambiguous.
func (s *Server) addPeer(p Peer) error {
	s.cfgMu.Lock()
	defer s.cfgMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("add peer %s: %w", p.Device, net.ErrClosed)
	}
	var stale []Key
	for _, k := range []Key{s.byAddr[p.Address], s.byDevice[p.Device]} {
		if _, ok := s.byKey[k]; ok && k != p.PublicKey && !slices.Contains(stale, k) {
			stale = append(stale, k)
		}
	}
	s.mu.Unlock()

	var b strings.Builder
	for _, k := range stale {
		fmt.Fprintf(&b, "public_key=%s\nremove=true\n", k.hex())
	}
	fmt.Fprintf(&b, "public_key=%s\nreplace_allowed_ips=true\nallowed_ip=%s\n",
		p.PublicKey.hex(), netip.PrefixFrom(p.Address, p.Address.BitLen()))
	if err := s.dev.IpcSet(b.String()); err != nil {
		return fmt.Errorf("add peer %s: %w", p.Device, err)
	}

	s.mu.Lock()
	for _, k := range stale {
		s.forgetLocked(k)
	}
	s.byKey[p.PublicKey] = &peerState{Peer: p, added: time.Now()}
	s.byDevice[p.Device] = p.PublicKey
	s.byAddr[p.Address] = p.PublicKey
	s.peers.Set(float64(len(s.byKey)))
	s.mu.Unlock()
	if len(stale) > 0 {
		s.log.Info("replaced stale peer", "device", p.Device, "address", p.Address, "removed", len(stale))
	}
	s.log.Debug("peer added", "device", p.Device, "address", p.Address)
	return nil
}

type wgStats struct {
	handshake time.Time
	rx, tx    uint64
}

// readStats parses the UAPI dump; wireguard-go exposes per-peer handshake
// times and counters nowhere else.
func (s *Server) readStats() (map[Key]wgStats, error) {
	dump, err := s.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("ipc get: %w", err)
	}
	return parseStats(dump), nil
}

func parseStats(dump string) map[Key]wgStats {
	out := map[Key]wgStats{}
	var (
		cur   Key
		st    wgStats
		have  bool
		sec   int64
		nsec  int64
		flush = func() {
			if have {
				if sec != 0 || nsec != 0 {
					st.handshake = time.Unix(sec, nsec)
				}
				out[cur] = st
			}
		}
	)
	sc := bufio.NewScanner(strings.NewReader(dump))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "public_key":
			flush()
			cur, st, have, sec, nsec = Key{}, wgStats{}, false, 0, 0
			if b, err := hexKey(v); err == nil {
				cur, have = b, true
			}
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			st.rx, _ = strconv.ParseUint(v, 10, 64)
		case "tx_bytes":
			st.tx, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	flush()
	return out
}

func hexKey(s string) (Key, error) {
	var k Key
	if len(s) != 64 {
		return k, errors.New("bad hex key length")
	}
	for i := range k {
		hi, ok1 := unhex(s[2*i])
		lo, ok2 := unhex(s[2*i+1])
		if !ok1 || !ok2 {
			return Key{}, errors.New("bad hex key")
		}
		k[i] = hi<<4 | lo
	}
	return k, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// watch turns wireguard-go's handshake times into Handshake calls and idle
// removals. wireguard-go has no handshake hook, so it polls.
func (s *Server) watch() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.pollInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		stats, err := s.readStats()
		if err != nil {
			s.log.Warn("read peer stats", "err", err)
			continue
		}
		type event struct {
			p  Peer
			at time.Time
		}
		var events []event
		var idle []uuid.UUID
		now := time.Now()
		s.mu.Lock()
		for k, st := range s.byKey {
			if w, ok := stats[k]; ok && w.handshake.After(st.lastHandshake) {
				st.lastHandshake = w.handshake
				events = append(events, event{st.Peer, w.handshake})
			}
			last := st.lastHandshake
			if last.IsZero() {
				last = st.added
			}
			if now.Sub(last) > s.cfg.IdleAfter {
				idle = append(idle, st.Device)
			}
		}
		s.mu.Unlock()
		for _, e := range events {
			s.log.Debug("handshake", "device", e.p.Device, "at", e.at)
			if s.cfg.Handshake != nil {
				s.cfg.Handshake(e.p, e.at)
			}
		}
		for _, d := range idle {
			if s.RemovePeer(d) {
				s.log.Info("removed idle peer", "device", d)
			}
		}
	}
}

// lazyBind wraps wireguard-go's UDP bind to vet handshake initiations before
// the device sees them, and adds a receive function through which initiations
// held during Lookup are delivered once their peer exists.
type lazyBind struct {
	conn.Bind
	s *Server

	mu     sync.Mutex
	closed chan struct{}
}

func (b *lazyBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, actual, err := b.Bind.Open(port)
	if err != nil {
		return nil, 0, err
	}
	closed := make(chan struct{})
	b.mu.Lock()
	b.closed = closed
	b.mu.Unlock()
	b.s.port.Store(uint32(actual))
	out := make([]conn.ReceiveFunc, 0, len(fns)+1)
	for _, fn := range fns {
		out = append(out, b.filter(fn))
	}
	out = append(out, b.held(closed))
	return out, actual, nil
}

func (b *lazyBind) Close() error {
	b.mu.Lock()
	if b.closed != nil {
		close(b.closed)
		b.closed = nil
	}
	b.mu.Unlock()
	return b.Bind.Close()
}

func (b *lazyBind) filter(fn conn.ReceiveFunc) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		n, err := fn(packets, sizes, eps)
		for i := range n {
			if sizes[i] == msgInitiationSize && isInitiation(packets[i][:sizes[i]]) && !b.s.admit(packets[i][:sizes[i]], eps[i]) {
				// wireguard-go skips zero-sized entries.
				sizes[i] = 0
			}
		}
		return n, err
	}
}

func (b *lazyBind) held(closed <-chan struct{}) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var d datagram
		select {
		case <-closed:
			return 0, net.ErrClosed
		case d = <-b.s.reinject:
		}
		n := 0
		for {
			sizes[n] = copy(packets[n], d.packet)
			eps[n] = d.ep
			n++
			if n == len(packets) {
				return n, nil
			}
			select {
			case d = <-b.s.reinject:
			default:
				return n, nil
			}
		}
	}
}

func wgLogger(log *slog.Logger) *device.Logger {
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if log.Enabled(context.Background(), slog.LevelDebug) {
				log.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			log.Warn(fmt.Sprintf(format, args...))
		},
	}
}
