// Package kvtest is the conformance suite for kv.Store. Every store runs the
// identical checks, so code tested against the in-process store behaves the
// same on Redis and on a Redis Cluster. StartRedisCluster gives tests (this
// package's and others') a real cluster of local redis-server processes.
package kvtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/testutil"
)

// Run runs the suite. newStore is called once per test, which runs in
// parallel with the others; it should register the store's Close with
// t.Cleanup. Each test also uses its own random key prefix and deletes its
// keys when it ends, so tests may share one server.
func Run(t *testing.T, newStore func(t *testing.T) kv.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, e *env)
	}{
		{"GetMissing", testGetMissing},
		{"RoundTrip", testRoundTrip},
		{"Overwrite", testOverwrite},
		{"Delete", testDelete},
		{"TTLExpiry", testTTLExpiry},
		{"TTLReplacedOnlyByStoringWrite", testTTLReplaced},
		{"NegativeTTL", testNegativeTTL},
		{"MGet", testMGet},
		{"SetIfNewer", testSetIfNewer},
		{"SetIfNewerTTL", testSetIfNewerTTL},
		{"ConcurrentSetIfNewer", testConcurrentSetIfNewer},
		{"SetManyIfNewer", testSetManyIfNewer},
		{"Copies", testCopies},
		{"CanceledContext", testCanceledContext},
		{"Close", testClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newEnv(t, newStore))
		})
	}
}

type env struct {
	t      *testing.T
	s      kv.Store
	prefix string

	mu   sync.Mutex
	used []string
}

func newEnv(t *testing.T, newStore func(t *testing.T) kv.Store) *env {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails, per crypto/rand
	e := &env{t: t, s: newStore(t), prefix: "kvtest:" + hex.EncodeToString(b) + ":"}
	// Registered after newStore's cleanup, so it runs first, while the store
	// is still open.
	t.Cleanup(e.cleanup)
	return e
}

// key returns the test's name for a key and remembers it for cleanup.
func (e *env) key(name string) string {
	k := e.prefix + name
	e.mu.Lock()
	e.used = append(e.used, k)
	e.mu.Unlock()
	return k
}

func (e *env) cleanup() {
	// t.Context is already canceled when cleanups run.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, k := range e.used {
		if err := e.s.Delete(ctx, k); err != nil && !errors.Is(err, kv.ErrClosed) {
			e.t.Errorf("cleanup: %v", err)
		}
	}
}

func (e *env) set(key string, v []byte, ttl time.Duration) {
	e.t.Helper()
	if err := e.s.Set(e.t.Context(), key, v, ttl); err != nil {
		e.t.Fatalf("Set(%q): %v", key, err)
	}
}

func (e *env) setIfNewer(key string, seq uint64, v []byte, ttl time.Duration) bool {
	e.t.Helper()
	stored, err := e.s.SetIfNewer(e.t.Context(), key, seq, v, ttl)
	if err != nil {
		e.t.Fatalf("SetIfNewer(%q, %d): %v", key, seq, err)
	}
	return stored
}

func (e *env) del(key string) {
	e.t.Helper()
	if err := e.s.Delete(e.t.Context(), key); err != nil {
		e.t.Fatalf("Delete(%q): %v", key, err)
	}
}

// wantValue checks Get, GetWithSeq and MGet all agree on key's value and seq.
func (e *env) wantValue(key string, want []byte, wantSeq uint64) {
	e.t.Helper()
	ctx := e.t.Context()
	got, err := e.s.Get(ctx, key)
	if err != nil || got == nil || !bytes.Equal(got, want) {
		e.t.Fatalf("Get(%q) = %q, %v; want %q (non-nil)", key, got, err, want)
	}
	got, seq, err := e.s.GetWithSeq(ctx, key)
	if err != nil || got == nil || !bytes.Equal(got, want) || seq != wantSeq {
		e.t.Fatalf("GetWithSeq(%q) = %q, %d, %v; want %q (non-nil), %d", key, got, seq, err, want, wantSeq)
	}
	all, err := e.s.MGet(ctx, key)
	if err != nil || len(all) != 1 || all[0] == nil || !bytes.Equal(all[0], want) {
		e.t.Fatalf("MGet(%q) = %q, %v; want [%q] (non-nil)", key, all, err, want)
	}
}

func (e *env) wantMissing(key string) {
	e.t.Helper()
	ctx := e.t.Context()
	if got, err := e.s.Get(ctx, key); !errors.Is(err, kv.ErrNotFound) || got != nil {
		e.t.Fatalf("Get(%q) = %q, %v; want nil, ErrNotFound", key, got, err)
	}
	if got, seq, err := e.s.GetWithSeq(ctx, key); !errors.Is(err, kv.ErrNotFound) || got != nil || seq != 0 {
		e.t.Fatalf("GetWithSeq(%q) = %q, %d, %v; want nil, 0, ErrNotFound", key, got, seq, err)
	}
	if all, err := e.s.MGet(ctx, key); err != nil || len(all) != 1 || all[0] != nil {
		e.t.Fatalf("MGet(%q) = %q, %v; want [nil]", key, all, err)
	}
}

// waitGone waits until key has expired. Nothing asserts how soon expiry
// happens; testutil.Wait only bounds a hang.
func (e *env) waitGone(key string) {
	e.t.Helper()
	testutil.Eventually(e.t, fmt.Sprintf("%q to expire", key), func() error {
		_, err := e.s.Get(e.t.Context(), key)
		if errors.Is(err, kv.ErrNotFound) {
			return nil
		}
		if err != nil {
			// A store error is no reason to wait on: stop with it.
			e.t.Fatalf("Get(%q): %v", key, err)
		}
		return errors.New("still present")
	})
	e.wantMissing(key)
}

func testGetMissing(t *testing.T, e *env) {
	e.wantMissing(e.key("never-set"))
}

// binaryValues are values a store could mangle: empty (nil and non-nil), NUL
// bytes, runs of zeros as long as a sequence header, invalid UTF-8, and one
// larger than a typical socket buffer.
func binaryValues() map[string][]byte {
	big := make([]byte, 256<<10)
	_, _ = rand.Read(big)
	return map[string][]byte{
		"nil":          nil,
		"empty":        {},
		"text":         []byte(`{"status":"idle"}`),
		"nul":          {0},
		"zeros":        bytes.Repeat([]byte{0}, 9),
		"high":         {0xff, 0xfe, 0x80, 0x00, 0x7f},
		"invalid utf8": {'a', 0xc3, 0x28, 0x00, 'b'},
		"crlf":         []byte("a\r\nb\r\n$3\r\n"),
		"256KiB":       big,
	}
}

func testRoundTrip(t *testing.T, e *env) {
	for name, v := range binaryValues() {
		k := e.key("set:" + name)
		e.set(k, v, 0)
		e.wantValue(k, v, 0)

		k = e.key("setifnewer:" + name)
		if !e.setIfNewer(k, 42, v, 0) {
			t.Fatalf("SetIfNewer(%q, 42) on an absent key refused", k)
		}
		e.wantValue(k, v, 42)
	}
	// A long TTL must not make a fresh value invisible.
	k := e.key("ttl")
	e.set(k, []byte("v"), time.Hour)
	e.wantValue(k, []byte("v"), 0)
}

func testOverwrite(t *testing.T, e *env) {
	k := e.key("k")
	for _, v := range []string{"first", "a longer second value", "3", ""} {
		e.set(k, []byte(v), 0)
		e.wantValue(k, []byte(v), 0)
	}
}

func testDelete(t *testing.T, e *env) {
	k := e.key("k")
	e.set(k, []byte("v"), 0)
	e.del(k)
	e.wantMissing(k)
	e.del(k)                  // already gone
	e.del(e.key("never-set")) // never there

	// Deleting forgets the sequence too.
	e.setIfNewer(k, 9, []byte("old"), 0)
	e.del(k)
	if !e.setIfNewer(k, 1, []byte("new"), 0) {
		t.Fatalf("SetIfNewer(%q, 1) after Delete refused", k)
	}
	e.wantValue(k, []byte("new"), 1)
}

func testTTLExpiry(t *testing.T, e *env) {
	persistent := e.key("persistent")
	e.set(persistent, []byte("stays"), 0)
	tests := []struct {
		name  string
		write func(k string)
	}{
		{"Set 50ms", func(k string) { e.set(k, []byte("v"), 50*time.Millisecond) }},
		{"Set 100µs rounds up, not down to no expiry", func(k string) { e.set(k, []byte("v"), 100*time.Microsecond) }},
		{"SetIfNewer 50ms", func(k string) { e.setIfNewer(k, 3, []byte("v"), 50*time.Millisecond) }},
		{"Set without TTL, then with", func(k string) {
			e.set(k, []byte("v"), 0)
			e.set(k, []byte("v"), 50*time.Millisecond)
		}},
	}
	for _, tc := range tests {
		k := e.key(tc.name)
		tc.write(k)
		e.waitGone(k)
	}
	e.wantValue(persistent, []byte("stays"), 0)
}

// testTTLReplaced checks that a storing write replaces the TTL and a refused
// SetIfNewer keeps it, without timing: each key gets its 50ms TTL before the
// sentinel does, so once the sentinel has expired, a key that kept its TTL
// would have expired too.
func testTTLReplaced(t *testing.T, e *env) {
	const ttl = 50 * time.Millisecond
	tests := []struct {
		name    string
		write   func(k string)
		want    string
		wantSeq uint64
	}{
		{"Set clears the TTL of Set", func(k string) {
			e.set(k, []byte("a"), ttl)
			e.set(k, []byte("b"), 0)
		}, "b", 0},
		{"SetIfNewer clears the TTL of SetIfNewer", func(k string) {
			e.setIfNewer(k, 1, []byte("a"), ttl)
			e.setIfNewer(k, 2, []byte("b"), 0)
		}, "b", 2},
		{"SetIfNewer clears the TTL of Set", func(k string) {
			e.set(k, []byte("a"), ttl)
			e.setIfNewer(k, 1, []byte("b"), 0)
		}, "b", 1},
		{"Set clears the TTL of SetIfNewer", func(k string) {
			e.setIfNewer(k, 7, []byte("a"), ttl)
			e.set(k, []byte("b"), 0)
		}, "b", 0},
		{"refused SetIfNewer sets no TTL", func(k string) {
			e.setIfNewer(k, 5, []byte("a"), 0)
			if e.setIfNewer(k, 3, []byte("b"), ttl) {
				t.Fatalf("SetIfNewer(%q, 3) over 5 stored", k)
			}
		}, "a", 5},
	}
	keys := make([]string, len(tests))
	for i, tc := range tests {
		keys[i] = e.key(tc.name)
		tc.write(keys[i])
	}
	sentinel := e.key("sentinel")
	e.set(sentinel, []byte("s"), ttl)
	e.waitGone(sentinel)
	for i, tc := range tests {
		e.wantValue(keys[i], []byte(tc.want), tc.wantSeq)
	}
}

func testNegativeTTL(t *testing.T, e *env) {
	ctx := t.Context()
	k := e.key("k")
	if err := e.s.Set(ctx, k, []byte("v"), -time.Millisecond); err == nil {
		t.Errorf("Set with negative TTL: no error")
	}
	if stored, err := e.s.SetIfNewer(ctx, k, 1, []byte("v"), -time.Nanosecond); err == nil || stored {
		t.Errorf("SetIfNewer with negative TTL = %v, %v; want false, an error", stored, err)
	}
	e.wantMissing(k)
}

func testMGet(t *testing.T, e *env) {
	ctx := t.Context()
	a, missing, c, empty := e.key("a"), e.key("missing"), e.key("c"), e.key("empty")
	e.set(a, []byte("A"), 0)
	e.setIfNewer(c, 7, []byte("C"), 0)
	e.set(empty, nil, 0)

	got, err := e.s.MGet(ctx, a, missing, c, empty, a, missing)
	if err != nil {
		t.Fatalf("MGet: %v", err)
	}
	want := [][]byte{[]byte("A"), nil, []byte("C"), {}, []byte("A"), nil}
	if len(got) != len(want) {
		t.Fatalf("MGet returned %d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if (got[i] == nil) != (want[i] == nil) || !bytes.Equal(got[i], want[i]) {
			t.Errorf("MGet entry %d = %q (nil: %v), want %q (nil: %v)", i, got[i], got[i] == nil, want[i], want[i] == nil)
		}
	}

	got, err = e.s.MGet(ctx)
	if err != nil || len(got) != 0 {
		t.Errorf("MGet() = %q, %v; want empty, nil", got, err)
	}
}

type step struct {
	op         string // "set", "sin" (SetIfNewer) or "del"
	seq        uint64
	value      string
	wantStored bool
}

func testSetIfNewer(t *testing.T, e *env) {
	tests := []struct {
		name    string
		steps   []step
		want    string
		wantSeq uint64
	}{
		{"first store", []step{{"sin", 5, "a", true}}, "a", 5},
		{"higher stores", []step{{"sin", 5, "a", true}, {"sin", 6, "b", true}}, "b", 6},
		{"equal refused", []step{{"sin", 5, "a", true}, {"sin", 5, "b", false}}, "a", 5},
		{"lower refused", []step{{"sin", 5, "a", true}, {"sin", 4, "b", false}}, "a", 5},
		{"zero on absent key stores", []step{{"sin", 0, "a", true}}, "a", 0},
		{"zero over Set refused", []step{{"set", 0, "a", false}, {"sin", 0, "b", false}}, "a", 0},
		{"one over Set stores", []step{{"set", 0, "a", false}, {"sin", 1, "b", true}}, "b", 1},
		{"Set resets the sequence", []step{{"sin", 9, "a", true}, {"set", 0, "b", false}, {"sin", 1, "c", true}}, "c", 1},
		{"Delete forgets the sequence", []step{{"sin", 9, "a", true}, {"del", 0, "", false}, {"sin", 2, "b", true}}, "b", 2},
		{"carry between bytes", []step{{"sin", 255, "a", true}, {"sin", 256, "b", true}, {"sin", 255, "c", false}}, "b", 256},
		{"beyond float64 precision", []step{
			{"sin", 1 << 53, "a", true}, {"sin", 1<<53 + 1, "b", true}, {"sin", 1 << 53, "c", false},
		}, "b", 1<<53 + 1},
		{"top bit", []step{
			{"sin", 1 << 63, "a", true}, {"sin", 1<<63 - 1, "b", false},
			{"sin", math.MaxUint64, "c", true}, {"sin", math.MaxUint64, "d", false},
		}, "c", math.MaxUint64},
	}
	ctx := t.Context()
	for _, tc := range tests {
		k := e.key(tc.name)
		for i, s := range tc.steps {
			switch s.op {
			case "set":
				e.set(k, []byte(s.value), 0)
			case "del":
				e.del(k)
			case "sin":
				stored, err := e.s.SetIfNewer(ctx, k, s.seq, []byte(s.value), 0)
				if err != nil || stored != s.wantStored {
					t.Fatalf("%s: step %d: SetIfNewer(seq %d) = %v, %v; want %v", tc.name, i, s.seq, stored, err, s.wantStored)
				}
			}
		}
		e.wantValue(k, []byte(tc.want), tc.wantSeq)
	}
}

// testSetManyIfNewer: each write behaves as its own SetIfNewer, in order
// (two writes to one key see each other), and a bad TTL writes nothing.
func testSetManyIfNewer(t *testing.T, e *env) {
	ctx := t.Context()
	held, fresh, twice, short := e.key("held"), e.key("fresh"), e.key("twice"), e.key("short")
	e.setIfNewer(held, 5, []byte("old"), 0)
	stored, err := e.s.SetManyIfNewer(ctx, []kv.Write{
		{Key: held, Seq: 4, Value: []byte("lower")},
		{Key: fresh, Seq: 1, Value: []byte("a")},
		{Key: twice, Seq: 2, Value: []byte("first")},
		{Key: twice, Seq: 1, Value: []byte("second")},
		{Key: short, Seq: 1, Value: []byte("s"), TTL: 50 * time.Millisecond},
	})
	if err != nil {
		t.Fatalf("SetManyIfNewer: %v", err)
	}
	if want := []bool{false, true, true, false, true}; !slices.Equal(stored, want) {
		t.Fatalf("stored = %v, want %v", stored, want)
	}
	e.wantValue(held, []byte("old"), 5)
	e.wantValue(fresh, []byte("a"), 1)
	e.wantValue(twice, []byte("first"), 2)
	e.waitGone(short)

	if stored, err := e.s.SetManyIfNewer(ctx, nil); err != nil || len(stored) != 0 {
		t.Fatalf("SetManyIfNewer(nil) = %v, %v", stored, err)
	}
	other := e.key("other")
	if _, err := e.s.SetManyIfNewer(ctx, []kv.Write{
		{Key: other, Seq: 9, Value: []byte("v")},
		{Key: fresh, Seq: 9, Value: []byte("v"), TTL: -time.Second},
	}); err == nil {
		t.Fatal("SetManyIfNewer with a negative TTL succeeded")
	}
	e.wantMissing(other)
	e.wantValue(fresh, []byte("a"), 1)
}

func testSetIfNewerTTL(t *testing.T, e *env) {
	k := e.key("k")
	if !e.setIfNewer(k, 5, []byte("a"), 50*time.Millisecond) {
		t.Fatalf("SetIfNewer(%q, 5) on an absent key refused", k)
	}
	e.waitGone(k)
	// The sequence expired with the value, so a lower one stores.
	if !e.setIfNewer(k, 1, []byte("b"), 0) {
		t.Fatalf("SetIfNewer(%q, 1) after expiry refused", k)
	}
	e.wantValue(k, []byte("b"), 1)
}

// testConcurrentSetIfNewer races writers with interleaved sequences on one
// key, plus a reader that must never see the sequence go backwards.
func testConcurrentSetIfNewer(t *testing.T, e *env) {
	const writers, perWriter = 8, 100
	const last = writers * perWriter
	ctx := t.Context()
	k := e.key("k")
	start := make(chan struct{})
	done := make(chan struct{})
	var wg, reader sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			<-start
			for i := range perWriter {
				seq := uint64(i*writers + w + 1)
				stored, err := e.s.SetIfNewer(ctx, k, seq, fmt.Appendf(nil, "v%d", seq), 0)
				if err != nil {
					t.Errorf("SetIfNewer(%d): %v", seq, err)
					return
				}
				if seq == last && !stored {
					t.Errorf("SetIfNewer(%d), the highest sequence, refused", seq)
				}
			}
		})
	}
	reader.Go(func() {
		var prev uint64
		for {
			select {
			case <-done:
				return
			default:
			}
			v, seq, err := e.s.GetWithSeq(ctx, k)
			if errors.Is(err, kv.ErrNotFound) {
				continue
			}
			if err != nil {
				t.Errorf("GetWithSeq: %v", err)
				return
			}
			if seq < prev {
				t.Errorf("sequence went back from %d to %d", prev, seq)
			}
			if want := fmt.Sprintf("v%d", seq); string(v) != want {
				t.Errorf("GetWithSeq = %q, %d: value does not belong to its sequence", v, seq)
			}
			prev = seq
		}
	})
	close(start)
	wg.Wait()
	close(done)
	reader.Wait()
	e.wantValue(k, fmt.Appendf(nil, "v%d", last), last)
}

func testCopies(t *testing.T, e *env) {
	ctx := t.Context()
	writes := []struct {
		name  string
		write func(k string, v []byte)
		seq   uint64
	}{
		{"Set", func(k string, v []byte) { e.set(k, v, 0) }, 0},
		{"SetIfNewer", func(k string, v []byte) { e.setIfNewer(k, 3, v, 0) }, 3},
	}
	reads := []struct {
		name string
		read func(k string) []byte
	}{
		{"Get", func(k string) []byte {
			v, err := e.s.Get(ctx, k)
			if err != nil {
				t.Fatalf("Get(%q): %v", k, err)
			}
			return v
		}},
		{"GetWithSeq", func(k string) []byte {
			v, _, err := e.s.GetWithSeq(ctx, k)
			if err != nil {
				t.Fatalf("GetWithSeq(%q): %v", k, err)
			}
			return v
		}},
		{"MGet", func(k string) []byte {
			vs, err := e.s.MGet(ctx, k)
			if err != nil || len(vs) != 1 {
				t.Fatalf("MGet(%q) = %q, %v", k, vs, err)
			}
			return vs[0]
		}},
	}
	for _, w := range writes {
		k := e.key(w.name)
		in := []byte("original")
		w.write(k, in)
		copy(in, "XXXXXXXX")
		e.wantValue(k, []byte("original"), w.seq)
		for _, r := range reads {
			out := r.read(k)
			copy(out, "YYYYYYYY")
			e.wantValue(k, []byte("original"), w.seq)
		}
	}
}

func testCanceledContext(t *testing.T, e *env) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	k := e.key("k")
	checks := map[string]error{}
	_, checks["Get"] = e.s.Get(ctx, k)
	_, _, checks["GetWithSeq"] = e.s.GetWithSeq(ctx, k)
	checks["Set"] = e.s.Set(ctx, k, []byte("v"), 0)
	_, checks["SetIfNewer"] = e.s.SetIfNewer(ctx, k, 1, []byte("v"), 0)
	_, checks["SetManyIfNewer"] = e.s.SetManyIfNewer(ctx, []kv.Write{{Key: k, Seq: 1, Value: []byte("v")}})
	_, checks["MGet"] = e.s.MGet(ctx, k)
	checks["Delete"] = e.s.Delete(ctx, k)
	checks["Ping"] = e.s.Ping(ctx)
	for op, err := range checks {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a canceled context: %v; want context.Canceled", op, err)
		}
	}
	e.wantMissing(k)
}

func testClose(t *testing.T, e *env) {
	ctx := t.Context()
	if err := e.s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := e.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := e.s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	k := e.prefix + "k" // not e.key: cleanup cannot delete through a closed store, and nothing is written
	checks := map[string]error{}
	_, checks["Get"] = e.s.Get(ctx, k)
	_, _, checks["GetWithSeq"] = e.s.GetWithSeq(ctx, k)
	checks["Set"] = e.s.Set(ctx, k, []byte("v"), 0)
	_, checks["SetIfNewer"] = e.s.SetIfNewer(ctx, k, 1, []byte("v"), 0)
	_, checks["SetManyIfNewer"] = e.s.SetManyIfNewer(ctx, []kv.Write{{Key: k, Seq: 1, Value: []byte("v")}})
	_, checks["MGet"] = e.s.MGet(ctx, k)
	checks["Delete"] = e.s.Delete(ctx, k)
	checks["Ping"] = e.s.Ping(ctx)
	for op, err := range checks {
		if !errors.Is(err, kv.ErrClosed) {
			t.Errorf("%s after Close: %v; want kv.ErrClosed", op, err)
		}
	}
}
