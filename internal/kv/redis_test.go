package kv_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"slices"
	"strings"
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
func newRedis(t testing.TB) *kv.Redis {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := kv.NewRedis(ctx, redisURL())
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
// does not expose.
func rawRedis(t testing.TB) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(redisURL())
	if err != nil {
		t.Fatalf("parse %s: %v", redisURL(), err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// uniqueKey returns a key no other test uses, deleted when the test ends.
func uniqueKey(t testing.TB, c *redis.Client, name string) string {
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

func TestRedis(t *testing.T) {
	newRedis(t) // one clear failure, instead of one per subtest, when Redis is down
	kvtest.Run(t, func(t *testing.T) kv.Store { return newRedis(t) })
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

// TestRedisEncoding pins the layout other tools see with redis-cli: an
// 8-byte big-endian sequence, then the value.
func TestRedisEncoding(t *testing.T) {
	t.Parallel()
	s, c := newRedis(t), rawRedis(t)
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

// TestRedisForeignValues checks that keys written by something other than
// kv give errors, not garbage, and that Set can take such a key back.
func TestRedisForeignValues(t *testing.T) {
	t.Parallel()
	s, c := newRedis(t), rawRedis(t)
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

// TestRedisScriptCacheLoss covers a server that lost the script (restart,
// failover to a fresh replica, SCRIPT FLUSH): EVALSHA fails with NOSCRIPT
// and the store must fall back to EVAL rather than fail the write.
func TestRedisScriptCacheLoss(t *testing.T) {
	t.Parallel()
	s, c := newRedis(t), rawRedis(t)
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
}

// TestRedisTTLReachesServer checks the TTL Redis holds, which the suite can
// only observe by waiting.
func TestRedisTTLReachesServer(t *testing.T) {
	t.Parallel()
	s, c := newRedis(t), rawRedis(t)
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
