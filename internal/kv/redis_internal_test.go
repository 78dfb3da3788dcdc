package kv

import (
	"slices"
	"testing"
)

// TestParseClusterURL pins how the redis+cluster:// form maps onto
// go-redis's cluster options.
func TestParseClusterURL(t *testing.T) {
	tests := []struct {
		url                string
		addrs              []string
		user, password     string
		tls                bool
		wantDialTimeoutSet bool
	}{
		{url: "redis+cluster://127.0.0.1:7000", addrs: []string{"127.0.0.1:7000"}},
		{url: "redis+cluster://a:7000,b:7001,c:7002/", addrs: []string{"a:7000", "b:7001", "c:7002"}},
		{url: "redis+cluster://:s3cret@a:7000,b:7001/0", addrs: []string{"a:7000", "b:7001"}, password: "s3cret"},
		{url: "redis+cluster://flock:p%40ss@a:7000", addrs: []string{"a:7000"}, user: "flock", password: "p@ss"},
		{url: "rediss+cluster://a:7000,[::1]:7001,[::1]:7002", addrs: []string{"a:7000", "[::1]:7001", "[::1]:7002"}, tls: true},
		{url: "REDIS+CLUSTER://a:7000?dial_timeout=2s", addrs: []string{"a:7000"}, wantDialTimeoutSet: true},
	}
	for _, tc := range tests {
		opts, err := parseClusterURL(tc.url)
		if err != nil {
			t.Errorf("parseClusterURL(%q): %v", tc.url, err)
			continue
		}
		if !slices.Equal(opts.Addrs, tc.addrs) {
			t.Errorf("parseClusterURL(%q).Addrs = %v, want %v", tc.url, opts.Addrs, tc.addrs)
		}
		if opts.Username != tc.user || opts.Password != tc.password {
			t.Errorf("parseClusterURL(%q) user, password = %q, %q; want %q, %q", tc.url, opts.Username, opts.Password, tc.user, tc.password)
		}
		if (opts.TLSConfig != nil) != tc.tls {
			t.Errorf("parseClusterURL(%q) TLS = %v, want %v", tc.url, opts.TLSConfig != nil, tc.tls)
		}
		if (opts.DialTimeout != 0) != tc.wantDialTimeoutSet {
			t.Errorf("parseClusterURL(%q) DialTimeout = %v", tc.url, opts.DialTimeout)
		}
	}
}
