// Package tunnelroute finds and reaches the tunnel replica that holds a
// device's WireGuard peer. A device's peer lives on whichever replica it
// handshakes with (wgtunnel adds peers lazily), so the KV store records the
// holder of each device, and the API and proxy replicas dial a device
// through its holder: in process when they are the holder, otherwise over
// the internal plane (an HTTP upgrade to the holder's /internal/v1/tunnel/dial).
//
// Two leases keep the records honest. A holder record is written with the
// time of the handshake as its sequence (kv.SetIfNewer), so a replica that
// saw an older handshake can never take a device back from the replica it
// moved to, and expires unless a new handshake renews it (WireGuard
// re-handshakes every two minutes while a peer is alive). A replica record,
// renewed every few seconds, says the replica is up: a holder whose
// replica died is ignored at once, without waiting for its lease.
package tunnelroute

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/kv"
)

const (
	// HolderTTL outlives WireGuard's two-minute rekey with room for a
	// lost handshake packet or two.
	HolderTTL = 4 * time.Minute
	// ReplicaTTL is how long a replica that stopped renewing is still
	// routed to.
	ReplicaTTL = 15 * time.Second
	// ReplicaRenew is how often a replica renews its record.
	ReplicaRenew = 5 * time.Second
)

// ErrOffline means no live replica holds the device's peer.
var ErrOffline = errors.New("device offline: it holds no tunnel")

// Holder is the record of the replica holding a device's peer.
type Holder struct {
	Replica string `json:"replica"`
	// URL is the replica's internal HTTP base URL.
	URL string `json:"url"`
	// At is the handshake the record was written for.
	At time.Time `json:"at"`
}

// Directory is the KV record of which replica holds which device.
type Directory struct {
	KV kv.Store
}

func holderKey(device uuid.UUID) string { return "tunnel:holder:" + device.String() }
func replicaKey(id string) string       { return "tunnel:replica:" + id }

// Claim records that replica holds device since a handshake at at; it
// reports false when a newer handshake elsewhere already holds it.
func (d *Directory) Claim(ctx context.Context, device uuid.UUID, h Holder) (bool, error) {
	b, err := json.Marshal(h)
	if err != nil {
		return false, err
	}
	ok, err := d.KV.SetIfNewer(ctx, holderKey(device), uint64(h.At.UnixNano()), b, HolderTTL)
	if err != nil {
		return false, fmt.Errorf("record tunnel holder of %s: %w", device, err)
	}
	return ok, nil
}

// Forget drops the device's record (the device was deleted).
func (d *Directory) Forget(ctx context.Context, device uuid.UUID) error {
	if err := d.KV.Delete(ctx, holderKey(device)); err != nil {
		return fmt.Errorf("forget tunnel holder of %s: %w", device, err)
	}
	return nil
}

// Alive renews replica's record; a replica calls it every ReplicaRenew.
func (d *Directory) Alive(ctx context.Context, replica, url string) error {
	if err := d.KV.Set(ctx, replicaKey(replica), []byte(url), ReplicaTTL); err != nil {
		return fmt.Errorf("renew tunnel replica %s: %w", replica, err)
	}
	return nil
}

// Gone drops replica's record at a clean stop, so nothing routes to it.
func (d *Directory) Gone(ctx context.Context, replica string) error {
	return d.KV.Delete(ctx, replicaKey(replica))
}

// Holder returns the live replica holding device, or ErrOffline.
func (d *Directory) Holder(ctx context.Context, device uuid.UUID) (Holder, error) {
	raw, err := d.KV.Get(ctx, holderKey(device))
	if errors.Is(err, kv.ErrNotFound) {
		return Holder{}, ErrOffline
	}
	if err != nil {
		return Holder{}, fmt.Errorf("look up tunnel holder of %s: %w", device, err)
	}
	var h Holder
	if err := json.Unmarshal(raw, &h); err != nil {
		return Holder{}, fmt.Errorf("read tunnel holder of %s: %w", device, err)
	}
	if _, err := d.KV.Get(ctx, replicaKey(h.Replica)); errors.Is(err, kv.ErrNotFound) {
		return Holder{}, ErrOffline
	} else if err != nil {
		return Holder{}, fmt.Errorf("look up tunnel replica %s: %w", h.Replica, err)
	}
	return h, nil
}
