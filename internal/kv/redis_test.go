package kv_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/kv/kvtest"
)

func redisURL() string {
	if u := os.Getenv("FLOCK_TEST_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// newRedis fails rather than skips when Redis is down: a skipped suite
// reads as a pass, and the Redis store would go untested without anyone
// noticing.
func newRedis(t testing.TB, url string) *kv.Redis {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := kv.NewRedis(ctx, url)
	if err != nil {
		t.Fatalf("%v\nthe Redis tests need a Redis server: run `make services`, or point FLOCK_TEST_REDIS_URL at one", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close redis store: %v", err)
		}
	})
	return r
}

// rawRedis is a plain client for looking at, and planting, what the store
// does not expose; on a cluster it routes each key to its node as the store
// does.
func rawRedis(t testing.TB, rawURL string) redis.UniversalClient {
	t.Helper()
	var c redis.UniversalClient
	if seeds, ok := strings.CutPrefix(rawURL, "redis+cluster://"); ok {
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: strings.Split(seeds, ",")})
	} else {
		opts, err := redis.ParseURL(rawURL)
		if err != nil {
			t.Fatalf("parse %s: %v", rawURL, err)
		}
		c = redis.NewClient(opts)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// uniqueKey returns a key no other test uses, deleted when the test ends.
func uniqueKey(t testing.TB, c redis.UniversalClient, name string) string {
	t.Helper()
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	k := "kvtest:" + hex.EncodeToString(b) + ":" + name
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.Del(ctx, k).Err(); err != nil {
			t.Errorf("cleanup: delete %s: %v", k, err)
		}
	})
	return k
}

// TestRedis runs the conformance suite and the Redis-only checks against
// the machine's Redis.
func TestRedis(t *testing.T) {
	t.Parallel()
	testRedisStore(t, redisURL())
}

// TestRedisCluster runs the same against a three-node Redis Cluster of its
// own, and checks that the keys really spread over the nodes.
func TestRedisCluster(t *testing.T) {
	t.Parallel()
	rc := kvtest.StartRedisCluster(t, 3)
	testRedisStore(t, rc.URL)
	t.Run("SpreadsOverNodes", func(t *testing.T) {
		t.Parallel()
		testClusterSpread(t, rc)
	})
}

func testRedisStore(t *testing.T, url string) {
	newRedis(t, url) // one clear failure, instead of one per subtest, when Redis is down
	t.Run("Conformance", func(t *testing.T) {
		kvtest.Run(t, func(t *testing.T) kv.Store { return newRedis(t, url) })
	})
	for name, fn := range map[string]func(t *testing.T, url string){
		"Encoding":         testRedisEncoding,
		"ForeignValues":    testRedisForeignValues,
		"ScriptCacheLoss":  testRedisScriptCacheLoss,
		"TTLReachesServer": testRedisTTLReachesServer,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fn(t, url)
		})
	}
}

func TestNewRedisErrors(t *testing.T) {
	tests := []struct {
		name, url string
		wantIn    string
		wantNotIn string
	}{
		{"unreachable names the address", "redis://127.0.0.1:1/0", "127.0.0.1:1", ""},
		{"bad scheme", "http://127.0.0.1:6379", "parse redis url", ""},
		{"password stays out of the ping error", "redis://:s3cret@127.0.0.1:1/0", "127.0.0.1:1", "s3cret"},
		{"password stays out of the parse error", "redis://:s3cret@127.0.0.1:6379/0\x7f", "parse redis url", "s3cret"},
		{"cluster: unreachable names the seeds", "redis+cluster://127.0.0.1:1,127.0.0.1:2", "127.0.0.1:1,127.0.0.1:2", ""},
		{"cluster: password stays out of the ping error", "redis+cluster://:s3cret@127.0.0.1:1,127.0.0.1:2", "127.0.0.1:1", "s3cret"},
		{"cluster: password stays out of the parse error", "redis+cluster://:s3cret@127.0.0.1:1?dial_timeout=x", "parse redis cluster url", "s3cret"},
		{"cluster: seed without a port", "redis+cluster://127.0.0.1:7000,127.0.0.1", `seed "127.0.0.1": want host:port`, ""},
		{"cluster: no seeds", "redis+cluster://", "no seed nodes", ""},
		{"cluster: database other than 0", "redis+cluster://127.0.0.1:7000/2", "only database 0", ""},
		{"cluster: unknown option", "redis+cluster://127.0.0.1:7000?bogus=1", "unexpected option", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			r, err := kv.NewRedis(ctx, tc.url)
			if err == nil {
				_ = r.Close()
				t.Fatalf("NewRedis(%q): no error", tc.url)
			}
			if !strings.Contains(err.Error(), tc.wantIn) {
				t.Errorf("NewRedis error %q does not contain %q", err, tc.wantIn)
			}
			if tc.wantNotIn != "" && strings.Contains(err.Error(), tc.wantNotIn) {
				t.Errorf("NewRedis error %q contains %q", err, tc.wantNotIn)
			}
		})
	}
}

// testRedisEncoding pins the layout other tools see with redis-cli: an
// 8-byte big-endian sequence, then the value.
func testRedisEncoding(t *testing.T, url string) {
	s, c := newRedis(t, url), rawRedis(t, url)
	ctx := t.Context()
	tests := []struct {
		name  string
		write func(k string) error
		want  []byte
	}{
		{"Set", func(k string) error { return s.Set(ctx, k, []byte("v"), 0) },
			[]byte{0, 0, 0, 0, 0, 0, 0, 0, 'v'}},
		{"SetIfNewer", func(k string) error {
			_, err := s.SetIfNewer(ctx, k, 0x0102030405060708, []byte("v"), 0)
			return err
		}, []byte{1, 2, 3, 4, 5, 6, 7, 8, 'v'}},
	}
	for _, tc := range tests {
		k := uniqueKey(t, c, tc.name)
		if err := tc.write(k); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, err := c.Get(ctx, k).Bytes()
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("%s: raw GET = %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
}

// testRedisForeignValues checks that keys written by something other than
// kv give errors, not garbage, and that Set can take such a key back.
func testRedisForeignValues(t *testing.T, url string) {
	s, c := newRedis(t, url), rawRedis(t, url)
	ctx := t.Context()
	tests := []struct {
		name  string
		plant func(k string) error
	}{
		{"short string", func(k string) error { return c.Set(ctx, k, "abc", 0).Err() }},
		{"hash", func(k string) error { return c.HSet(ctx, k, "f", "v").Err() }},
	}
	for _, tc := range tests {
		k := uniqueKey(t, c, tc.name)
		if err := tc.plant(k); err != nil {
			t.Fatalf("%s: plant: %v", tc.name, err)
		}
		if _, err := s.Get(ctx, k); err == nil || errors.Is(err, kv.ErrNotFound) {
			t.Errorf("%s: Get = %v; want an error other than ErrNotFound", tc.name, err)
		}
		if stored, err := s.SetIfNewer(ctx, k, 1, []byte("v"), 0); err == nil || stored {
			t.Errorf("%s: SetIfNewer = %v, %v; want false, an error", tc.name, stored, err)
		}
		if err := s.Set(ctx, k, []byte("mine"), 0); err != nil {
			t.Fatalf("%s: Set: %v", tc.name, err)
		}
		if got, err := s.Get(ctx, k); err != nil || string(got) != "mine" {
			t.Errorf("%s: Get after Set = %q, %v; want \"mine\"", tc.name, got, err)
		}
	}
}

// testRedisScriptCacheLoss covers a server that lost the script (restart,
// failover to a fresh replica, SCRIPT FLUSH): EVALSHA fails with NOSCRIPT
// and the store must fall back to EVAL rather than fail the write. On a
// cluster SCRIPT FLUSH reaches every master.
func testRedisScriptCacheLoss(t *testing.T, url string) {
	s, c := newRedis(t, url), rawRedis(t, url)
	ctx := t.Context()
	k := uniqueKey(t, c, "k")
	for seq := uint64(1); seq <= 3; seq++ {
		if err := c.ScriptFlush(ctx).Err(); err != nil {
			t.Fatalf("SCRIPT FLUSH: %v", err)
		}
		if stored, err := s.SetIfNewer(ctx, k, seq, []byte("v"), 0); err != nil || !stored {
			t.Fatalf("SetIfNewer(%d) after SCRIPT FLUSH = %v, %v; want true", seq, stored, err)
		}
	}
	// A pipeline of writes all refused with NOSCRIPT is sent again.
	if err := c.ScriptFlush(ctx).Err(); err != nil {
		t.Fatalf("SCRIPT FLUSH: %v", err)
	}
	k2 := uniqueKey(t, c, "k2")
	stored, err := s.SetManyIfNewer(ctx, []kv.Write{{Key: k, Seq: 4, Value: []byte("v")}, {Key: k2, Seq: 1, Value: []byte("w")}})
	if err != nil || !slices.Equal(stored, []bool{true, true}) {
		t.Fatalf("SetManyIfNewer after SCRIPT FLUSH = %v, %v; want [true true]", stored, err)
	}

	// The cache may be lost again while refused writes are being resent:
	// every batch must still go through while another client flushes it
	// over and over.
	stop := make(chan struct{})
	var flusher sync.WaitGroup
	flusher.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := c.ScriptFlush(ctx).Err(); err != nil {
				t.Errorf("SCRIPT FLUSH: %v", err)
				return
			}
		}
	})
	defer func() { close(stop); flusher.Wait() }()
	keys := make([]string, 8)
	for i := range keys {
		keys[i] = uniqueKey(t, c, fmt.Sprintf("flushed-%d", i))
	}
	for seq := uint64(1); seq <= 50; seq++ {
		writes := make([]kv.Write, len(keys))
		for i, k := range keys {
			writes[i] = kv.Write{Key: k, Seq: seq, Value: []byte("v")}
		}
		stored, err := s.SetManyIfNewer(ctx, writes)
		if err != nil || slices.Contains(stored, false) {
			t.Fatalf("SetManyIfNewer(seq %d) while the script cache is flushed = %v, %v; want all stored", seq, stored, err)
		}
	}
}

// testRedisTTLReachesServer checks the TTL Redis holds, which the suite can
// only observe by waiting.
func testRedisTTLReachesServer(t *testing.T, url string) {
	s, c := newRedis(t, url), rawRedis(t, url)
	ctx := t.Context()
	tests := []struct {
		name  string
		write func(k string) error
		want  func(pttl time.Duration) bool
		desc  string
	}{
		{"Set no TTL", func(k string) error { return s.Set(ctx, k, []byte("v"), 0) },
			func(d time.Duration) bool { return d == -1 }, "-1 (no expiry)"},
		{"Set 1h", func(k string) error { return s.Set(ctx, k, []byte("v"), time.Hour) },
			func(d time.Duration) bool { return d > 59*time.Minute && d <= time.Hour }, "about 1h"},
		{"Set 1.5s is not truncated to 1s", func(k string) error { return s.Set(ctx, k, []byte("v"), 1500*time.Millisecond) },
			func(d time.Duration) bool { return d > time.Second && d <= 1500*time.Millisecond }, "(1s, 1.5s]"},
		{"SetIfNewer 1h", func(k string) error {
			_, err := s.SetIfNewer(ctx, k, 1, []byte("v"), time.Hour)
			return err
		}, func(d time.Duration) bool { return d > 59*time.Minute && d <= time.Hour }, "about 1h"},
		{"SetIfNewer no TTL", func(k string) error {
			_, err := s.SetIfNewer(ctx, k, 1, []byte("v"), 0)
			return err
		}, func(d time.Duration) bool { return d == -1 }, "-1 (no expiry)"},
	}
	for _, tc := range tests {
		k := uniqueKey(t, c, tc.name)
		if err := tc.write(k); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		d, err := c.PTTL(ctx, k).Result()
		if err != nil || !tc.want(d) {
			t.Errorf("%s: PTTL = %v, %v; want %s", tc.name, d, err, tc.desc)
		}
	}
}

// TestRedisClusterURLOnPlainServer: seeds that are no cluster fail at start
// with Redis's own reason, not at the first write.
func TestRedisClusterURLOnPlainServer(t *testing.T) {
	t.Parallel()
	opts, err := redis.ParseURL(redisURL())
	if err != nil {
		t.Fatalf("parse %s: %v", redisURL(), err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	r, err := kv.NewRedis(ctx, "redis+cluster://"+opts.Addr)
	if err == nil {
		_ = r.Close()
		t.Fatalf("NewRedis(redis+cluster://%s) on a server without cluster mode: no error", opts.Addr)
	}
	if !strings.Contains(err.Error(), "cluster support disabled") {
		t.Errorf("NewRedis error %q does not say the server has no cluster support", err)
	}
}

// testClusterSpread checks that the cluster store puts each key on the one
// node owning its slot, that a batch lands on every node, and that MGet
// reads keys of many slots back in order (a plain MGET would be refused
// with CROSSSLOT).
func testClusterSpread(t *testing.T, rc *kvtest.RedisCluster) {
	s, raw := newRedis(t, rc.URL), rawRedis(t, rc.URL)
	if !s.Cluster() {
		t.Fatalf("NewRedis(%s) made a single-server store", rc.URL)
	}
	ctx := t.Context()
	nodes := map[string]*redis.Client{}
	for _, a := range rc.Addrs {
		c := redis.NewClient(&redis.Options{Addr: a})
		t.Cleanup(func() { _ = c.Close() })
		nodes[a] = c
	}
	const n = 64
	keys := make([]string, n)
	writes := make([]kv.Write, n)
	for i := range keys {
		keys[i] = uniqueKey(t, raw, fmt.Sprint(i))
		writes[i] = kv.Write{Key: keys[i], Seq: uint64(i + 1), Value: []byte(keys[i])}
	}
	stored, err := s.SetManyIfNewer(ctx, writes)
	if err != nil || len(stored) != n || slices.Contains(stored, false) {
		t.Fatalf("SetManyIfNewer of %d new keys = %v, %v; want all stored", n, stored, err)
	}
	perNode := map[string]int{}
	for _, k := range keys {
		var holders []string
		for a, c := range nodes {
			// A node that does not own the key's slot answers MOVED.
			if got, err := c.Exists(ctx, k).Result(); err == nil && got == 1 {
				holders = append(holders, a)
			}
		}
		if len(holders) != 1 {
			t.Fatalf("key %s is held by %v; want exactly one node", k, holders)
		}
		perNode[holders[0]]++
	}
	if len(perNode) != len(rc.Addrs) {
		t.Errorf("%d keys landed on %d of %d nodes: %v", n, len(perNode), len(rc.Addrs), perNode)
	}

	missing := uniqueKey(t, raw, "missing")
	got, err := s.MGet(ctx, append([]string{missing}, append(keys, missing)...)...)
	if err != nil || len(got) != n+2 {
		t.Fatalf("MGet of %d keys over the cluster = %d entries, %v", n+2, len(got), err)
	}
	if got[0] != nil || got[n+1] != nil {
		t.Errorf("MGet of an absent key = %q, %q; want nil", got[0], got[n+1])
	}
	for i, k := range keys {
		if string(got[i+1]) != k {
			t.Errorf("MGet entry %d = %q, want %q", i+1, got[i+1], k)
		}
	}
}
