package kv

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// shardCount bounds lock contention between ingester goroutines: two
	// writers meet on a lock only when their devices hash to the same shard.
	shardCount = 16
	// sweepInterval bounds only how long dead entries hold memory: readers
	// already treat them as absent the moment they expire.
	sweepInterval = 10 * time.Second
)

// Memory is the in-process Store for single-process setups. Its zero value
// is not usable; call NewMemory, and Close to stop its janitor goroutine.
type Memory struct {
	seed   maphash.Seed
	epoch  time.Time // expiry is kept as monotonic time since epoch, so wall-clock jumps cannot expire or revive entries
	shards [shardCount]shard

	closed    atomic.Bool
	closeOnce sync.Once
	stop      chan struct{}
	done      chan struct{}
}

type shard struct {
	mu sync.RWMutex
	m  map[string]entry
	// Pads the shard to a cache line so the lock words of neighbouring
	// shards do not share one and bounce between cores.
	_ [32]byte
}

type entry struct {
	val []byte
	seq uint64
	exp time.Duration // since Memory.epoch; 0 = never
}

func (e entry) live(now time.Duration) bool { return e.exp == 0 || now < e.exp }

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-process store and starts the janitor
// goroutine that sweeps expired entries; Close stops it.
func NewMemory() *Memory {
	m := &Memory{
		seed:  maphash.MakeSeed(),
		epoch: time.Now(),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	for i := range m.shards {
		m.shards[i].m = make(map[string]entry)
	}
	go m.janitor(sweepInterval)
	return m
}

func (m *Memory) now() time.Duration { return time.Since(m.epoch) }

func (m *Memory) shard(key string) *shard {
	return &m.shards[maphash.String(m.seed, key)%shardCount]
}

func (m *Memory) expiry(ttl time.Duration) time.Duration {
	if ttl == 0 {
		return 0
	}
	return m.now() + roundTTL(ttl)
}

// usable reports, as an error, why an operation must not run.
func (m *Memory) usable(ctx context.Context) error {
	if m.closed.Load() {
		return ErrClosed
	}
	return ctx.Err()
}

// clone never returns nil, so an empty value stays distinguishable from an
// absent one.
func clone(b []byte) []byte { return append(make([]byte, 0, len(b)), b...) }

func (m *Memory) Get(ctx context.Context, key string) ([]byte, error) {
	v, _, err := m.get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", key, err)
	}
	if v == nil {
		return nil, ErrNotFound
	}
	return v, nil
}

func (m *Memory) GetWithSeq(ctx context.Context, key string) ([]byte, uint64, error) {
	v, seq, err := m.get(ctx, key)
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", key, err)
	}
	if v == nil {
		return nil, 0, ErrNotFound
	}
	return v, seq, nil
}

// get returns a copy of the live value, or nil when there is none.
func (m *Memory) get(ctx context.Context, key string) ([]byte, uint64, error) {
	if err := m.usable(ctx); err != nil {
		return nil, 0, err
	}
	sh := m.shard(key)
	now := m.now()
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	e, ok := sh.m[key]
	if !ok || !e.live(now) {
		return nil, 0, nil
	}
	return clone(e.val), e.seq, nil
}

func (m *Memory) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := checkTTL(ttl); err != nil {
		return fmt.Errorf("set %s: %w", key, err)
	}
	if err := m.usable(ctx); err != nil {
		return fmt.Errorf("set %s: %w", key, err)
	}
	e := entry{val: clone(value), exp: m.expiry(ttl)}
	sh := m.shard(key)
	sh.mu.Lock()
	sh.m[key] = e
	sh.mu.Unlock()
	return nil
}

func (m *Memory) SetIfNewer(ctx context.Context, key string, seq uint64, value []byte, ttl time.Duration) (bool, error) {
	if err := checkTTL(ttl); err != nil {
		return false, fmt.Errorf("set %s if newer than %d: %w", key, seq, err)
	}
	if err := m.usable(ctx); err != nil {
		return false, fmt.Errorf("set %s if newer than %d: %w", key, seq, err)
	}
	// Copied before locking to keep the critical section short; a refused
	// write wastes the copy, but refusals are the rare late event.
	e := entry{val: clone(value), seq: seq, exp: m.expiry(ttl)}
	sh := m.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if cur, ok := sh.m[key]; ok && cur.live(m.now()) && cur.seq >= seq {
		return false, nil
	}
	sh.m[key] = e
	return true, nil
}

func (m *Memory) SetManyIfNewer(ctx context.Context, writes []Write) ([]bool, error) {
	if err := checkWrites(writes); err != nil {
		return nil, err
	}
	stored := make([]bool, len(writes))
	for i, w := range writes {
		ok, err := m.SetIfNewer(ctx, w.Key, w.Seq, w.Value, w.TTL)
		if err != nil {
			return nil, err
		}
		stored[i] = ok
	}
	return stored, nil
}

func (m *Memory) Delete(ctx context.Context, key string) error {
	if err := m.usable(ctx); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	sh := m.shard(key)
	sh.mu.Lock()
	delete(sh.m, key)
	sh.mu.Unlock()
	return nil
}

// MGet reads each key under its own shard's lock, so unlike Redis's MGET it
// is not one snapshot across keys; live state is per device, and no caller
// needs two devices' entries to be mutually consistent.
func (m *Memory) MGet(ctx context.Context, keys ...string) ([][]byte, error) {
	if err := m.usable(ctx); err != nil {
		return nil, fmt.Errorf("mget %d keys: %w", len(keys), err)
	}
	out := make([][]byte, len(keys))
	now := m.now()
	for i, key := range keys {
		sh := m.shard(key)
		sh.mu.RLock()
		if e, ok := sh.m[key]; ok && e.live(now) {
			out[i] = clone(e.val)
		}
		sh.mu.RUnlock()
	}
	return out, nil
}

func (m *Memory) Ping(ctx context.Context) error {
	if err := m.usable(ctx); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	return nil
}

// Close stops the janitor and waits for it to exit. Entries stay in memory
// until the Memory itself is unreachable.
func (m *Memory) Close() error {
	m.closeOnce.Do(func() {
		m.closed.Store(true)
		close(m.stop)
		<-m.done
	})
	return nil
}

func (m *Memory) janitor(interval time.Duration) {
	defer close(m.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			m.sweep()
		}
	}
}

// sweep finds dead entries under the read lock and takes the write lock only
// for shards that have some, so a sweep of a large, mostly live store does
// not stall readers.
func (m *Memory) sweep() {
	var dead []string
	for i := range m.shards {
		sh := &m.shards[i]
		now := m.now()
		dead = dead[:0]
		sh.mu.RLock()
		for k, e := range sh.m {
			if !e.live(now) {
				dead = append(dead, k)
			}
		}
		sh.mu.RUnlock()
		if len(dead) == 0 {
			continue
		}
		sh.mu.Lock()
		for _, k := range dead {
			// Rewritten since the scan: a new write's expiry lies after now.
			if e, ok := sh.m[k]; ok && !e.live(now) {
				delete(sh.m, k)
			}
		}
		sh.mu.Unlock()
	}
}
