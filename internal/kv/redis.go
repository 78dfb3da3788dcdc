package kv

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Encoding. Every key holds one Redis string: an 8-byte big-endian sequence
// followed by the value (Set writes sequence 0). A single string, rather than
// a hash of sequence and value, keeps every read to one plain command: Get and
// GetWithSeq are a GET, and MGet is one MGET (pipelined GETs on a cluster)
// that returns Set and SetIfNewer keys alike, where a hash would answer GET
// with WRONGTYPE and MGET with nil.
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

// URL schemes of a Redis Cluster: one or more seed nodes, comma separated.
const (
	clusterScheme    = "redis+cluster"
	tlsClusterScheme = "rediss+cluster"
)

// Redis is the Store on Redis or Valkey, either one server (redis://) or a
// Redis Cluster (redis+cluster://). Every command but MGet names one key,
// so a cluster client routes it to the key's shard as it is; MGet, whose
// keys lie in many hash slots, is sent as one GET per key in a pipeline
// instead (see MGet).
type Redis struct {
	rdb redis.UniversalClient
	// cluster is rdb when it is a cluster client, nil for one server.
	cluster *redis.ClusterClient
	addr    string

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

// NewRedis connects and pings, so a wrong address fails at start rather
// than at the first device message. rawURL is one of:
//
//	redis://[[user]:password@]host:port[/db]   one server (rediss:// for TLS)
//	redis+cluster://[[user]:password@]host1:port1[,host2:port2...][?options]
//	                                           a Redis Cluster (rediss+cluster:// for TLS)
//
// The cluster form names seed nodes: any reachable one tells the client
// the whole cluster, so a few suffice. A cluster has only database 0. Its
// options are go-redis's cluster URL options (dial_timeout=1s, pool_size=20,
// ...). For a cluster the ping reaches every master.
func NewRedis(ctx context.Context, rawURL string) (*Redis, error) {
	redisLogOnce.Do(func() { redis.SetLogger(slogLogger{}) })
	scheme, _, _ := strings.Cut(rawURL, "://")
	if s := strings.ToLower(scheme); s == clusterScheme || s == tlsClusterScheme {
		return newRedisCluster(ctx, rawURL)
	}
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("kv: parse redis url: %w", urlReason(err))
	}
	r := &Redis{rdb: redis.NewClient(opts), addr: opts.Addr}
	if err := r.rdb.Ping(ctx).Err(); err != nil {
		_ = r.rdb.Close()
		return nil, fmt.Errorf("kv: ping redis at %s: %w", opts.Addr, err)
	}
	return r, nil
}

func newRedisCluster(ctx context.Context, rawURL string) (*Redis, error) {
	opts, err := parseClusterURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("kv: parse redis cluster url: %w", err)
	}
	c := redis.NewClusterClient(opts)
	r := &Redis{rdb: c, cluster: c, addr: strings.Join(opts.Addrs, ",")}
	if err := r.Ping(ctx); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("kv: %w", err)
	}
	return r, nil
}

// urlReason drops the URL net/url quotes in its errors: it may carry a
// password.
func urlReason(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// parseClusterURL reads the redis+cluster:// form. net/url cannot parse a
// list of hosts in general (it refuses a list of bracketed IPv6 literals),
// so the authority is split by hand; the rest is handed to go-redis's own
// cluster URL parser as redis://user:password@seed1?addr=seed2&addr=...,
// which is its spelling of the same thing.
func parseClusterURL(rawURL string) (*redis.ClusterOptions, error) {
	scheme, rest, _ := strings.Cut(rawURL, "://")
	base := "redis"
	if strings.EqualFold(scheme, tlsClusterScheme) {
		base = "rediss"
	}
	authority, tail := rest, ""
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		authority, tail = rest[:i], rest[i:]
	}
	userinfo := ""
	if i := strings.LastIndex(authority, "@"); i >= 0 {
		userinfo, authority = authority[:i+1], authority[i+1:]
	}
	path, query, _ := strings.Cut(tail, "?")
	if strings.Contains(query, "#") || strings.Contains(path, "#") {
		return nil, errors.New("a fragment (#...) has no meaning here")
	}
	if path != "" && path != "/" && path != "/0" {
		return nil, fmt.Errorf("database %q: a Redis Cluster has only database 0", strings.TrimPrefix(path, "/"))
	}
	if authority == "" {
		return nil, errors.New("no seed nodes: want redis+cluster://host1:port1,host2:port2")
	}
	seeds := strings.Split(authority, ",")
	for _, s := range seeds {
		if h, p, err := net.SplitHostPort(s); err != nil || h == "" || p == "" {
			return nil, fmt.Errorf("seed %q: want host:port", s)
		}
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("options: %w", err)
	}
	if q.Has("addr") {
		return nil, errors.New("list every seed node in the host part (host1:port1,host2:port2), not as addr= options")
	}
	for _, s := range seeds[1:] {
		q.Add("addr", s)
	}
	opts, err := redis.ParseClusterURL(base + "://" + userinfo + seeds[0] + "?" + q.Encode())
	if err != nil {
		return nil, urlReason(err)
	}
	return opts, nil
}

// Addr is the host:port the store talks to (a cluster's seeds, comma
// separated), for start-up logs.
func (r *Redis) Addr() string { return r.addr }

// Cluster reports whether the store talks to a Redis Cluster.
func (r *Redis) Cluster() bool { return r.cluster != nil }

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

// SetManyIfNewer sends every write's EVALSHA in one pipeline. Writes a
// server refused with NOSCRIPT (it lost the script: restart, failover,
// SCRIPT FLUSH) are sent again in a second pipeline as EVAL, which carries
// the script itself and caches it again, so they cannot be refused for
// that twice, however often the cache is lost meanwhile (on a cluster,
// loading the script first would have to reach every master, and a flush
// could land in between).
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
			keys, args := []string{w.Key}, []any{encode(w.Seq, w.Value), ms(w.TTL)}
			if attempt == 0 {
				cmds[j] = setIfNewerScript.EvalSha(ctx, pipe, keys, args...)
			} else {
				cmds[j] = setIfNewerScript.Eval(ctx, pipe, keys, args...)
			}
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
	if len(keys) == 0 {
		// Redis rejects an MGET without keys.
		return make([][]byte, 0), nil
	}
	op := fmt.Sprintf("mget %d keys", len(keys))
	var vals []any
	var err error
	if r.cluster != nil {
		vals, err = r.clusterGets(ctx, keys)
	} else {
		vals, err = r.rdb.MGet(ctx, keys...).Result()
	}
	if err != nil {
		return nil, wrap(op, err)
	}
	if len(vals) != len(keys) {
		return nil, fmt.Errorf("%s: got %d replies", op, len(vals))
	}
	out := make([][]byte, len(keys))
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

// clusterGets reads keys as MGET would, on a cluster. A cluster refuses an
// MGET whose keys lie in different hash slots (CROSSSLOT), and device keys
// are spread over all 16384 slots, so grouping them by slot would rarely put
// two in one MGET. One GET per key in a pipeline costs the same round trips:
// the cluster client splits the pipeline by node and sends each node its
// share at once, following MOVED and ASK while slots migrate. Like MGET, a
// key holding another type reads as absent.
func (r *Redis) clusterGets(ctx context.Context, keys []string) ([]any, error) {
	pipe := r.cluster.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.Get(ctx, k)
	}
	// Exec's error is the first command's, redis.Nil for an absent key
	// among them; each command is read below.
	_, _ = pipe.Exec(ctx)
	vals := make([]any, len(keys))
	for i, c := range cmds {
		v, err := c.Result()
		switch {
		case err == nil:
			vals[i] = v
		case errors.Is(err, redis.Nil), redis.HasErrorPrefix(err, "WRONGTYPE"):
		default:
			return nil, err
		}
	}
	return vals, nil
}

// Ping checks one server, or every master of a cluster: a cluster whose
// master is down cannot serve that master's keys, and readiness should say
// so.
func (r *Redis) Ping(ctx context.Context) error {
	if r.cluster == nil {
		if err := r.rdb.Ping(ctx).Err(); err != nil {
			return wrap("ping redis at "+r.addr, err)
		}
		return nil
	}
	// ForEachMaster runs fn on its own goroutines and waits for them.
	err := r.cluster.ForEachMaster(ctx, func(ctx context.Context, master *redis.Client) error {
		if err := master.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("master %s: %w", master.Options().Addr, err)
		}
		return nil
	})
	if err != nil {
		return wrap("ping redis cluster at "+r.addr, err)
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
