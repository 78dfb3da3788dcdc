// Package livestate names the keys and values the ingester keeps in the KV
// store for each device, so the API reads exactly what the ingester wrote.
package livestate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/kv"
)

// StateTTL bounds how long a device's last reported state lives in the KV
// store after its last report; PostgreSQL keeps the durable copy of device
// records, and a device reports at least every few minutes while it runs.
const StateTTL = 7 * 24 * time.Hour

// StateKey is where a device's latest reported state lives; the stored
// sequence is the state's own seq, so a redelivered older state never
// replaces a newer one.
func StateKey(device uuid.UUID) string { return "flock:device:" + device.String() + ":state" }

// ConnKey is where a device's connection status lives; the stored sequence
// is ConnSeq, so the events of an old connection never override a newer one.
func ConnKey(device uuid.UUID) string { return "flock:device:" + device.String() + ":conn" }

// State is the value under StateKey.
type State struct {
	ReceivedAt time.Time       `json:"received_at"`
	State      json.RawMessage `json:"state"` // an events.ReportedState as the device sent it
}

// Conn is the value under ConnKey.
type Conn struct {
	Online        bool      `json:"online"`
	ConnectionSeq int64     `json:"connection_seq"`
	At            time.Time `json:"at"`
}

// ConnSeq orders connectivity events: a newer connection beats everything of
// an older one, and within one connection offline beats online (so a
// duplicated online after the will cannot revive it). The +1 keeps it above
// zero, which SetIfNewer treats as "never replace".
func ConnSeq(connectionSeq int64, online bool) uint64 {
	s := uint64(connectionSeq)*2 + 1
	if !online {
		s++
	}
	return s
}

// ReadState returns the device's latest reported state, or nil when the KV
// store has none.
func ReadState(ctx context.Context, store kv.Store, device uuid.UUID) (*State, error) {
	b, err := store.Get(ctx, StateKey(device))
	if errors.Is(err, kv.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read live state of device %s: %w", device, err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decode live state of device %s: %w", device, err)
	}
	return &s, nil
}

// ReadConn returns the device's connection status, or nil when the KV store
// has none.
func ReadConn(ctx context.Context, store kv.Store, device uuid.UUID) (*Conn, error) {
	b, err := store.Get(ctx, ConnKey(device))
	if errors.Is(err, kv.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read connection of device %s: %w", device, err)
	}
	var c Conn
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("decode connection of device %s: %w", device, err)
	}
	return &c, nil
}
