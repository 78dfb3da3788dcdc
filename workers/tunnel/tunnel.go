// Package tunnel runs one tunnel replica: a userspace WireGuard server
// (wgtunnel, no root, no TUN) that accepts each registered device's
// handshake, records in the KV store that it holds the device's peer, and
// dials devices' ports for the API and proxy replicas (in process, or over
// the internal plane). Deleting a device removes its peer here at once.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/tunnelroute"
	"github.com/flock-io/flock-api/internal/wgtunnel"
)

// revocationChannel is the notification every device deletion sends
// (migrations/00007).
const revocationChannel = "flock_device_revoked"

// sweepEvery is how often the replica checks that the devices it holds are
// still its own (a device that moved to another replica is dropped here).
const sweepEvery = 30 * time.Second

// Config configures a replica.
type Config struct {
	Pool       *pgxpool.Pool
	Dir        *tunnelroute.Directory
	PrivateKey wgtunnel.Key
	Listen     string // UDP
	Prefix     netip.Prefix
	// Replica names this replica in the directory; InternalURL is where
	// other replicas reach its HTTP server.
	Replica     string
	InternalURL string
	Log         *slog.Logger
	Registerer  prometheus.Registerer
}

// Replica is a running tunnel replica.
type Replica struct {
	cfg Config
	srv *wgtunnel.Server
	log *slog.Logger

	handshakes chan handshake
	claims     prometheus.Counter
	stop       context.CancelFunc
	wg         sync.WaitGroup
}

type handshake struct {
	peer wgtunnel.Peer
	at   time.Time
}

// New binds the UDP port and starts the WireGuard server; Run does the
// rest.
func New(ctx context.Context, cfg Config) (*Replica, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	self, err := tunnelroute.Address(cfg.Prefix, tunnelroute.ServerHost)
	if err != nil {
		return nil, err
	}
	r := &Replica{cfg: cfg, log: cfg.Log.With("replica", cfg.Replica), handshakes: make(chan handshake, 1024)}
	if cfg.Registerer != nil {
		r.claims = prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_tunnel_claims_lost_total",
			Help: "Peers dropped because the device handshook with another replica since."})
		if err := cfg.Registerer.Register(r.claims); err != nil {
			return nil, err
		}
	} else {
		r.claims = prometheus.NewCounter(prometheus.CounterOpts{Name: "unused"})
	}
	// The server outlives New's caller's context; Run's end closes it.
	sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	r.stop = stop
	r.srv, err = wgtunnel.NewServer(sctx, wgtunnel.ServerConfig{
		PrivateKey: cfg.PrivateKey, Listen: cfg.Listen, Address: self,
		Lookup: r.lookup, Handshake: r.handshake, Log: cfg.Log, Registerer: cfg.Registerer,
	})
	if err != nil {
		stop()
		return nil, fmt.Errorf("tunnel server on %s: %w", cfg.Listen, err)
	}
	return r, nil
}

// Server is the replica's WireGuard server (the API in the same process
// dials through it).
func (r *Replica) Server() *wgtunnel.Server { return r.srv }

// Handler serves the internal plane's dial path for other replicas.
func (r *Replica) Handler(token string) http.Handler {
	return tunnelroute.Handler(r.srv, token, 0, r.log)
}

// lookup resolves a handshake's key to the device that registered it.
func (r *Replica) lookup(ctx context.Context, pub wgtunnel.Key) (wgtunnel.Peer, error) {
	t, err := db.New(r.cfg.Pool).TunnelByKey(ctx, pub[:])
	if errors.Is(err, pgx.ErrNoRows) {
		return wgtunnel.Peer{}, wgtunnel.ErrUnknownPeer
	}
	if err != nil {
		return wgtunnel.Peer{}, fmt.Errorf("look up tunnel key: %w", err)
	}
	addr, err := tunnelroute.Address(r.cfg.Prefix, t.Host)
	if err != nil {
		return wgtunnel.Peer{}, err
	}
	return wgtunnel.Peer{Device: t.DeviceID, PublicKey: pub, Address: addr}, nil
}

// handshake hands a new handshake to Run: the server's goroutine must not
// wait on the KV store.
func (r *Replica) handshake(p wgtunnel.Peer, at time.Time) {
	select {
	case r.handshakes <- handshake{p, at}:
	default:
		// Run is behind; the next handshake (two minutes at most) claims
		// the device, and until then it is still routed here if it was.
		r.log.Warn("tunnel: handshake queue full; claim deferred", "device_id", p.Device)
	}
}

// Run claims devices as they handshake, renews the replica's record, hears
// deletions, and drops devices that moved, until ctx ends; then it
// withdraws the replica and closes the server.
func (r *Replica) Run(ctx context.Context) error {
	defer func() {
		gone, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := r.cfg.Dir.Gone(gone, r.cfg.Replica); err != nil {
			r.log.Warn("tunnel: withdrawing the replica failed; it expires on its own", "error", err)
		}
		r.stop()
		_ = r.srv.Close()
		r.wg.Wait()
	}()
	if err := r.cfg.Dir.Alive(ctx, r.cfg.Replica, r.cfg.InternalURL); err != nil {
		return err
	}
	r.wg.Go(func() {
		postgres.Listen(ctx, r.cfg.Pool, revocationChannel, r.sweepDeleted, r.revoked, r.log)
	})
	renew := time.NewTicker(tunnelroute.ReplicaRenew)
	defer renew.Stop()
	sweep := time.NewTicker(sweepEvery)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case h := <-r.handshakes:
			r.claim(ctx, h)
		case <-renew.C:
			if err := r.cfg.Dir.Alive(ctx, r.cfg.Replica, r.cfg.InternalURL); err != nil && ctx.Err() == nil {
				r.log.Warn("tunnel: renewing the replica failed", "error", err)
			}
		case <-sweep.C:
			r.sweepMoved(ctx)
		}
	}
}

func (r *Replica) claim(ctx context.Context, h handshake) {
	ok, err := r.cfg.Dir.Claim(ctx, h.peer.Device, tunnelroute.Holder{Replica: r.cfg.Replica, URL: r.cfg.InternalURL, At: h.at})
	switch {
	case err != nil:
		r.log.Warn("tunnel: claiming a device failed", "device_id", h.peer.Device, "error", err)
	case !ok:
		// A newer handshake on another replica holds the device: this
		// peer is a leftover.
		r.claims.Inc()
		r.srv.RemovePeer(h.peer.Device)
		r.log.Info("tunnel: device moved to another replica", "device_id", h.peer.Device)
	default:
		r.log.Debug("tunnel: device handshook", "device_id", h.peer.Device, "address", h.peer.Address)
	}
}

// revoked removes a deleted device's peer and its directory record.
func (r *Replica) revoked(payload string) {
	id, err := uuid.Parse(payload)
	if err != nil {
		return
	}
	if r.srv.RemovePeer(id) {
		r.log.Info("tunnel: deleted device's peer removed", "device_id", id)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.cfg.Dir.Forget(ctx, id); err != nil {
			r.log.Warn("tunnel: forgetting a deleted device failed; its record expires", "device_id", id, "error", err)
		}
	}
}

// sweepDeleted removes the peers of devices deleted while the replica was
// not listening.
func (r *Replica) sweepDeleted(ctx context.Context) error {
	peers := r.srv.Peers()
	if len(peers) == 0 {
		return nil
	}
	ids := make([]uuid.UUID, len(peers))
	for i, p := range peers {
		ids[i] = p.Device
	}
	owners, err := db.New(r.cfg.Pool).DeviceOwners(ctx, ids)
	if err != nil {
		return fmt.Errorf("check held devices exist: %w", err)
	}
	exist := make(map[uuid.UUID]bool, len(owners))
	for _, o := range owners {
		exist[o.ID] = true
	}
	for _, id := range ids {
		if !exist[id] {
			r.revoked(id.String())
		}
	}
	return nil
}

// sweepMoved drops the peers of devices another replica now holds.
func (r *Replica) sweepMoved(ctx context.Context) {
	for _, p := range r.srv.Peers() {
		h, err := r.cfg.Dir.Holder(ctx, p.Device)
		if err != nil || h.Replica == r.cfg.Replica {
			continue
		}
		r.claims.Inc()
		r.srv.RemovePeer(p.Device)
	}
}
