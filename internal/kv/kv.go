// Package kv is the live-state store: the current reported state of each
// device, its online flag, and the connection sequence that orders connect
// and disconnect events. Production runs it on Redis or Valkey (NewRedis),
// one server or a Redis Cluster; a single-process setup runs it in memory
// (NewMemory). All pass the same conformance suite in package kvtest, so
// code written against Store behaves the same on each.
//
// FLOCK_REDIS_URL (NewRedis) names one server as redis://host:6379/0
// (rediss:// for TLS), or a Redis Cluster by its seed nodes as
// redis+cluster://host1:7000,host2:7001,host3:7002 (rediss+cluster:// for
// TLS; user and password as in redis://, e.g.
// redis+cluster://:secret@host1:7000,host2:7001; go-redis's cluster options
// as query parameters, e.g. ?dial_timeout=2s). Any reachable seed tells the
// client the whole cluster. A cluster has only database 0.
//
// Rules of the key space, shared by both stores:
//
//   - Every stored value carries a sequence. Set stores sequence 0;
//     SetIfNewer stores the sequence it is given.
//   - Get, MGet and GetWithSeq read any key, however it was written: Get and
//     MGet return the value of a SetIfNewer key, GetWithSeq returns 0 as the
//     sequence of a Set key.
//   - SetIfNewer stores when the key is absent (or expired) or its stored
//     sequence is lower than seq. A Set value therefore yields to any
//     SetIfNewer with seq >= 1, and SetIfNewer with seq 0 never replaces an
//     existing value.
//   - Set replaces unconditionally and resets the sequence to 0: it is the
//     escape hatch for an operator, and forgets any ordering.
//   - Every write that stores replaces the TTL (0 = no expiry); a refused
//     SetIfNewer changes neither value nor TTL. A negative TTL is an error.
//     Redis counts TTLs in milliseconds, so both stores round a TTL up to
//     the next millisecond.
//   - An empty value is a value: Get returns a non-nil empty slice and MGet
//     a non-nil empty entry, which is how a caller tells it from absence.
//   - Values are copied in and out: the store never keeps or hands out a
//     slice the caller can still change.
package kv

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"
)

// Store is the live-state store. Keys are strings; values are opaque bytes.
type Store interface {
	// Get returns ErrNotFound when the key is absent or expired.
	Get(ctx context.Context, key string) ([]byte, error)
	// Set stores value with sequence 0; ttl 0 means no expiry.
	Set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// Delete of an absent key is not an error.
	Delete(ctx context.Context, key string) error
	// MGet returns one entry per key, in order, nil where a key is absent.
	MGet(ctx context.Context, keys ...string) ([][]byte, error)
	// SetIfNewer stores value under key only if seq is greater than the
	// sequence stored with the current value (or there is none), atomically;
	// it reports whether it stored. This is how a late "disconnected" event
	// of an old connection is kept from overwriting the state of a newer
	// connection.
	SetIfNewer(ctx context.Context, key string, seq uint64, value []byte, ttl time.Duration) (stored bool, err error)
	// SetManyIfNewer is SetIfNewer for each write, in order, sent together
	// (one pipeline on Redis: the ingester writes a batch of devices' state
	// at once). Each write is atomic on its own, the set is not. It reports
	// for each write whether it stored; a negative TTL in any write fails
	// the call before anything is written.
	SetManyIfNewer(ctx context.Context, writes []Write) (stored []bool, err error)
	// GetWithSeq returns the value and the sequence stored by SetIfNewer (0
	// for values stored by Set).
	GetWithSeq(ctx context.Context, key string) (value []byte, seq uint64, err error)
	Ping(ctx context.Context) error
	// Close releases the store; further calls fail with ErrClosed. Closing
	// twice is not an error.
	Close() error
}

// Write is one write of SetManyIfNewer.
type Write struct {
	Key   string
	Seq   uint64
	Value []byte
	TTL   time.Duration
}

func checkWrites(writes []Write) error {
	for _, w := range writes {
		if err := checkTTL(w.TTL); err != nil {
			return fmt.Errorf("set %s if newer than %d: %w", w.Key, w.Seq, err)
		}
	}
	return nil
}

var (
	// ErrNotFound means the key is absent or expired.
	ErrNotFound = errors.New("kv: not found")
	// ErrClosed means the store was used after Close, which is a shutdown
	// ordering bug in the caller; both stores report it the same way so the
	// bug shows in development too.
	ErrClosed = errors.New("kv: store closed")
)

// checkTTL rejects negative TTLs: go-redis reads -1 as "keep the old TTL"
// and Redis reads other negatives as "delete now", and neither is something
// a caller of Set means.
func checkTTL(ttl time.Duration) error {
	if ttl < 0 {
		return fmt.Errorf("negative ttl %s", ttl)
	}
	return nil
}

// roundTTL rounds up to whole milliseconds, the resolution of Redis, so a
// sub-millisecond TTL still expires instead of meaning "no expiry".
func roundTTL(ttl time.Duration) time.Duration {
	r := ttl % time.Millisecond
	if r == 0 {
		return ttl
	}
	if ttl > math.MaxInt64-time.Millisecond {
		return ttl - r
	}
	return ttl + time.Millisecond - r
}
