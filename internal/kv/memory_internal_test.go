package kv

import (
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

func (m *Memory) entries() int {
	n := 0
	for i := range m.shards {
		sh := &m.shards[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}

// These tests run in a synctest bubble: its clock moves only when every
// goroutine in it is blocked, so expiry and sweeping are checked at exact
// instants, and the bubble fails the test if the janitor outlives Close.

func TestMemoryExpiryInstant(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewMemory()
		defer m.Close()
		ctx := t.Context()
		if err := m.Set(ctx, "k", []byte("v"), 50*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50*time.Millisecond - time.Nanosecond)
		if _, err := m.Get(ctx, "k"); err != nil {
			t.Fatalf("Get just before expiry: %v", err)
		}
		time.Sleep(time.Nanosecond)
		if _, err := m.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get at expiry: %v; want ErrNotFound", err)
		}
		if got := m.entries(); got != 1 {
			t.Fatalf("%d entries before the sweep; want the dead one still held", got)
		}
	})
}

func TestMemoryJanitorSweeps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewMemory()
		defer m.Close()
		ctx := t.Context()
		for i, ttl := range []time.Duration{time.Second, 0, time.Minute} {
			if err := m.Set(ctx, string(rune('a'+i)), []byte("v"), ttl); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(sweepInterval)
		synctest.Wait() // let the janitor finish the sweep the tick started
		if got := m.entries(); got != 2 {
			t.Fatalf("%d entries after the first sweep; want 2 (the no-TTL and the 1-minute ones)", got)
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := m.entries(); got != 1 {
			t.Fatalf("%d entries after a minute; want 1", got)
		}
	})
}

func TestMemoryRefusedSetIfNewerKeepsTTL(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewMemory()
		defer m.Close()
		ctx := t.Context()
		if _, err := m.SetIfNewer(ctx, "k", 5, []byte("a"), time.Second); err != nil {
			t.Fatal(err)
		}
		if stored, err := m.SetIfNewer(ctx, "k", 4, []byte("b"), 0); err != nil || stored {
			t.Fatalf("SetIfNewer(4) over 5 = %v, %v; want false", stored, err)
		}
		time.Sleep(time.Second)
		if _, err := m.Get(ctx, "k"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get after the first write's TTL: %v; want ErrNotFound", err)
		}
	})
}

func TestMemoryCloseStopsJanitor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := NewMemory()
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		// synctest.Test fails with a deadlock if the janitor is still
		// blocked when this function returns.
	})
}

func TestRoundTTL(t *testing.T) {
	tests := []struct{ in, want time.Duration }{
		{0, 0},
		{time.Nanosecond, time.Millisecond},
		{time.Millisecond, time.Millisecond},
		{time.Millisecond + 1, 2 * time.Millisecond},
		{1500 * time.Microsecond, 2 * time.Millisecond},
		{time.Hour, time.Hour},
		{1<<63 - 1, (1<<63 - 1) / time.Millisecond * time.Millisecond},
	}
	for _, tc := range tests {
		if got := roundTTL(tc.in); got != tc.want {
			t.Errorf("roundTTL(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
