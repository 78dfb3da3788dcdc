package config_test

import (
	"bytes"
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/flock-io/flock-api/internal/config"
)

func load(t *testing.T, args []string, env map[string]string) (*config.Settings, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s := config.Register(fs)
	if err := fs.Parse(args); err != nil {
		return s, err
	}
	return s, s.Resolve(fs, func(k string) string { return env[k] })
}

func TestDefaults(t *testing.T) {
	s, err := load(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := s.Config()
	if c.Target != "all" || c.HTTPAddr != ":8080" || c.Dev || c.HTTPBodyLimit != 1<<20 ||
		c.DatabaseURL != "postgres://postgres@127.0.0.1:5432/flock?sslmode=disable" ||
		c.LogFormat != "json" || c.ShutdownGrace != 25*time.Second {
		t.Fatalf("defaults = %+v", c)
	}
}

func TestPrecedence(t *testing.T) {
	env := map[string]string{"FLOCK_HTTP_ADDR": "127.0.0.1:9000", "FLOCK_TARGET": "api", "FLOCK_DEV": "true"}
	s, err := load(t, []string{"--target=ingester"}, env)
	if err != nil {
		t.Fatal(err)
	}
	c := s.Config()
	if c.Target != "ingester" {
		t.Errorf("flag must beat env: target = %q", c.Target)
	}
	if c.HTTPAddr != "127.0.0.1:9000" || !c.Dev {
		t.Errorf("env must beat default: %+v", c)
	}
	if c.LogFormat != "text" {
		t.Errorf("dev mode defaults to text logs, got %q", c.LogFormat)
	}
}

func TestBadValuesNameTheSetting(t *testing.T) {
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{env: map[string]string{"FLOCK_HTTP_ADDR": "notaport"}, want: `invalid FLOCK_HTTP_ADDR: "notaport"`},
		{args: []string{"--http-addr=:99999"}, want: "invalid --http-addr"},
		{env: map[string]string{"FLOCK_DEV": "maybe"}, want: "invalid FLOCK_DEV"},
		{env: map[string]string{"FLOCK_HTTP_BODY_LIMIT": "lots"}, want: "invalid FLOCK_HTTP_BODY_LIMIT"},
		{env: map[string]string{"FLOCK_HTTP_BODY_LIMIT": "0"}, want: "invalid FLOCK_HTTP_BODY_LIMIT"},
		{env: map[string]string{"FLOCK_DATABASE_URL": "mysql://x"}, want: "invalid FLOCK_DATABASE_URL"},
		{env: map[string]string{"FLOCK_LOG_LEVEL": "loud"}, want: "invalid FLOCK_LOG_LEVEL"},
		{env: map[string]string{"FLOCK_LOG_FORMAT": "xml"}, want: "invalid FLOCK_LOG_FORMAT"},
		{env: map[string]string{"FLOCK_SHUTDOWN_GRACE": "soon"}, want: "invalid FLOCK_SHUTDOWN_GRACE"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			_, err := load(t, tt.args, tt.env)
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err = %v, want one line starting %q", err, tt.want)
			}
		})
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]int64{"1024": 1024, "1MiB": 1 << 20, "64 KiB": 64 << 10, "2GiB": 2 << 30} {
		var b config.ByteSize
		if err := b.Set(in); err != nil || int64(b) != want {
			t.Errorf("Set(%q) = %d, %v; want %d", in, b, err, want)
		}
	}
}

func TestPrintRedactsSecrets(t *testing.T) {
	s, err := load(t, nil, map[string]string{"FLOCK_DATABASE_URL": "postgres://flock:s3cret@db:5432/flock"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	s.Print(&out)
	if strings.Contains(out.String(), "s3cret") {
		t.Fatalf("password printed:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "postgres://flock:xxxxx@db:5432/flock") ||
		!strings.Contains(out.String(), "FLOCK_DATABASE_URL") || !strings.Contains(out.String(), "env") {
		t.Fatalf("print lacks the redacted URL or its source:\n%s", out.String())
	}
}

func TestServeNeedsAnIssuerOutsideDevMode(t *testing.T) {
	s, err := load(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CheckServe(); err == nil || !strings.HasPrefix(err.Error(), "invalid FLOCK_OIDC_ISSUER: required outside dev mode") {
		t.Fatalf("CheckServe = %v", err)
	}
	s, err = load(t, []string{"--dev"}, nil)
	if err != nil || s.CheckServe() != nil {
		t.Fatalf("dev mode runs without an issuer: %v %v", err, s.CheckServe())
	}
	if _, err := load(t, nil, map[string]string{"FLOCK_OIDC_ISSUER": "https://id.example.com"}); err == nil ||
		!strings.HasPrefix(err.Error(), "invalid FLOCK_OIDC_AUDIENCE: required") {
		t.Fatalf("issuer without audience: %v", err)
	}
	if _, err := load(t, nil, map[string]string{"FLOCK_OIDC_ISSUER": "id.example.com"}); err == nil ||
		!strings.HasPrefix(err.Error(), "invalid FLOCK_OIDC_ISSUER") {
		t.Fatalf("issuer without scheme: %v", err)
	}
}

// TestRedisClusterURL: FLOCK_REDIS_URL takes the redis+cluster:// form, and
// --print-config keeps its password out, even where net/url cannot parse
// the list of seeds (bracketed IPv6 literals): then the whole value is
// redacted.
func TestRedisClusterURL(t *testing.T) {
	tests := []struct{ url, printed string }{
		{"redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7001", "redis+cluster://:xxxxx@10.0.0.1:7000,10.0.0.2:7001"},
		{"rediss+cluster://flock:s3cret@[fd00::1]:7000,[fd00::2]:7001", "REDACTED"},
	}
	for _, tt := range tests {
		s, err := load(t, nil, map[string]string{"FLOCK_REDIS_URL": tt.url})
		if err != nil {
			t.Fatalf("FLOCK_REDIS_URL=%s: %v", tt.url, err)
		}
		var out bytes.Buffer
		s.Print(&out)
		if strings.Contains(out.String(), "s3cret") || !strings.Contains(out.String(), `"`+tt.printed+`"`) {
			t.Errorf("FLOCK_REDIS_URL=%s printed as:\n%s\nwant %q", tt.url, out.String(), tt.printed)
		}
	}
	if _, err := load(t, nil, map[string]string{"FLOCK_REDIS_URL": "cluster://10.0.0.1:7000"}); err == nil ||
		!strings.HasPrefix(err.Error(), "invalid FLOCK_REDIS_URL: want a redis:// or rediss:// URL, or redis+cluster://") {
		t.Fatalf("unknown scheme: %v", err)
	}
}
