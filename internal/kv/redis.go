package kv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Encoding. Every key holds one Redis string: an 8-byte big-endian sequence
// followed by the value (Set writes sequence 0). A single string, rather than
// a hash of sequence and value, keeps every read to one plain command: Get and
// GetWithSeq are a GET, and MGet is one MGET that returns Set and SetIfNewer
// keys alike, where a hash would answer GET with WRONGTYPE and MGET with nil.
// Only SetIfNewer, which must compare before it writes, needs a script. The
// price is that redis-cli shows the 8-byte header in front of each value.
const headerLen = 8

// setIfNewerScript compares the stored and the offered header byte by byte.
// Lua 5.1 numbers are doubles, exact only to 2^53, and Lua compares strings
// with strcoll under the locale Redis sets, so neither a number nor a string
// comparison is exact for every uint64.
//
// KEYS[1] key; ARGV[1] header+value; ARGV[2] ttl in ms, 0 = none.
// Returns 1 when it stored, 0 when it refused.
var setIfNewerScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur then
  if #cur < 8 then
    return redis.error_reply('kv: stored value is shorter than its 8-byte sequence header')
  end
  local new = ARGV[1]
  local newer = false
  for i = 1, 8 do
    local a, b = string.byte(new, i), string.byte(cur, i)
    if a ~= b then
      newer = a > b
      break
    end
  end
  if not newer then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
`)

// Redis is the Store on Redis or Valkey. It talks to a single endpoint (one
// server, or a proxy in front of a cluster): MGet sends one multi-key MGET,
// which a Redis Cluster refuses unless all keys share a hash slot.
type Redis struct {
	rdb  *redis.Client
	addr string

	closeOnce sync.Once
	closeErr  error
}

var _ Store = (*Redis)(nil)

// slogLogger carries go-redis's own messages (dial failures, pool trouble)
// into slog, so the process writes one log format. It asks for slog.Default
// at each message so a later slog.SetDefault still applies.
type slogLogger struct{}

func (slogLogger) Printf(ctx context.Context, format string, v ...any) {
	slog.Default().Log(ctx, slog.LevelWarn, fmt.Sprintf(format, v...), "component", "go-redis")
}

// go-redis has a single, package-global logger; pointing it at slog once is
// the most any one client can do.
var redisLogOnce sync.Once

// NewRedis connects to the redis:// or rediss:// URL and pings it, so a
// wrong address fails at start rather than at the first device message.
func NewRedis(ctx context.Context, rawURL string) (*Redis, error) {
	redisLogOnce.Do(func() { redis.SetLogger(slogLogger{}) })
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		// The URL may carry a password, and net/url quotes the whole URL in
		// its errors: keep only the reason.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("kv: parse redis url: %w", err)
	}
	r := &Redis{rdb: redis.NewClient(opts), addr: opts.Addr}
	if err := r.rdb.Ping(ctx).Err(); err != nil {
		_ = r.rdb.Close()
		return nil, fmt.Errorf("kv: ping redis at %s: %w", opts.Addr, err)
	}
	return r, nil
}

// Addr is the host:port the store talks to, for start-up logs.
func (r *Redis) Addr() string { return r.addr }

func encode(seq uint64, value []byte) []byte {
	b := make([]byte, headerLen+len(value))
	binary.BigEndian.PutUint64(b, seq)
	copy(b[headerLen:], value)
	return b
}

// decode returns a slice of b; b is always a fresh buffer from the client,
// so the caller owns the result.
func decode(b []byte) ([]byte, uint64, error) {
	if len(b) < headerLen {
		return nil, 0, fmt.Errorf("stored value of %d bytes is shorter than its %d-byte sequence header (written by something other than kv?)", len(b), headerLen)
	}
	return b[headerLen:], binary.BigEndian.Uint64(b), nil
}

// ms converts a TTL to the whole milliseconds Redis takes, rounded up;
// go-redis would otherwise round a sub-millisecond TTL itself and log about it.
func ms(ttl time.Duration) int64 { return int64(roundTTL(ttl) / time.Millisecond) }

// wrap adds the operation to err, and maps go-redis's closed-client error to
// ErrClosed so callers test one error for both stores.
func wrap(op string, err error) error {
	if errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("%s: %w", op, ErrClosed)
	}
	return fmt.Errorf("%s: %w", op, err)
}

func (r *Redis) Get(ctx context.Context, key string) ([]byte, error) {
	v, _, err := r.GetWithSeq(ctx, key)
	return v, err
}

// GetWithSeq needs no script: sequence and value live in one string, and one
// GET reads both at once.
func (r *Redis) GetWithSeq(ctx context.Context, key string) ([]byte, uint64, error) {
	b, err := r.rdb.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, wrap("get "+key, err)
	}
	v, seq, err := decode(b)
	if err != nil {
		return nil, 0, fmt.Errorf("get %s: %w", key, err)
	}
	return v, seq, nil
}

func (r *Redis) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := checkTTL(ttl); err != nil {
		return fmt.Errorf("set %s: %w", key, err)
	}
	// A whole number of milliseconds makes go-redis send PX (or EX), never
	// its own rounding.
	if err := r.rdb.Set(ctx, key, encode(0, value), time.Duration(ms(ttl))*time.Millisecond).Err(); err != nil {
		return wrap("set "+key, err)
	}
	return nil
}

func (r *Redis) SetIfNewer(ctx context.Context, key string, seq uint64, value []byte, ttl time.Duration) (bool, error) {
	op := fmt.Sprintf("set %s if newer than %d", key, seq)
	if err := checkTTL(ttl); err != nil {
		return false, fmt.Errorf("%s: %w", op, err)
	}
	// Run sends EVALSHA and falls back to EVAL, which also caches the script,
	// when the server lost it (restart, failover, SCRIPT FLUSH).
	n, err := setIfNewerScript.Run(ctx, r.rdb, []string{key}, encode(seq, value), ms(ttl)).Int64()
	if err != nil {
		return false, wrap(op, err)
	}
	return n == 1, nil
}

// SetManyIfNewer sends every write's EVALSHA in one pipeline. Writes the
// server refused with NOSCRIPT (it lost the script) are sent again after
// loading it.
func (r *Redis) SetManyIfNewer(ctx context.Context, writes []Write) ([]bool, error) {
	op := fmt.Sprintf("set %d keys if newer", len(writes))
	if err := checkWrites(writes); err != nil {
		return nil, err
	}
	stored := make([]bool, len(writes))
	pending := make([]int, len(writes))
	for i := range pending {
		pending[i] = i
	}
	for attempt := 0; len(pending) > 0; attempt++ {
		pipe := r.rdb.Pipeline()
		cmds := make([]*redis.Cmd, len(pending))
		for j, i := range pending {
			w := writes[i]
			cmds[j] = setIfNewerScript.EvalSha(ctx, pipe, []string{w.Key}, encode(w.Seq, w.Value), ms(w.TTL))
		}
		// Exec's error is the first command's; each is read below.
		_, _ = pipe.Exec(ctx)
		var again []int
		for j, i := range pending {
			n, err := cmds[j].Int64()
			if err != nil {
				if attempt == 0 && redis.HasErrorPrefix(err, "NOSCRIPT") {
					again = append(again, i)
					continue
				}
				return nil, wrap(op, err)
			}
			stored[i] = n == 1
		}
		if len(again) > 0 {
			if err := setIfNewerScript.Load(ctx, r.rdb).Err(); err != nil {
				return nil, wrap(op+": load script", err)
			}
		}
		pending = again
	}
	return stored, nil
}

func (r *Redis) Delete(ctx context.Context, key string) error {
	if err := r.rdb.Del(ctx, key).Err(); err != nil {
		return wrap("delete "+key, err)
	}
	return nil
}

// MGet returns the value of Set and SetIfNewer keys alike (without the
// sequence), and nil for keys that are absent or hold another Redis type.
func (r *Redis) MGet(ctx context.Context, keys ...string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	if len(keys) == 0 {
		// Redis rejects an MGET without keys.
		return out, nil
	}
	vals, err := r.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, wrap(fmt.Sprintf("mget %d keys", len(keys)), err)
	}
	if len(vals) != len(keys) {
		return nil, fmt.Errorf("mget %d keys: got %d replies", len(keys), len(vals))
	}
	for i, v := range vals {
		if v == nil {
			continue
		}
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("mget %s: unexpected reply type %T", keys[i], v)
		}
		val, _, err := decode([]byte(s))
		if err != nil {
			return nil, fmt.Errorf("mget %s: %w", keys[i], err)
		}
		out[i] = val
	}
	return out, nil
}

func (r *Redis) Ping(ctx context.Context) error {
	if err := r.rdb.Ping(ctx).Err(); err != nil {
		return wrap("ping redis at "+r.addr, err)
	}
	return nil
}

func (r *Redis) Close() error {
	r.closeOnce.Do(func() {
		if err := r.rdb.Close(); err != nil {
			r.closeErr = fmt.Errorf("close redis client for %s: %w", r.addr, err)
		}
	})
	return r.closeErr
}
