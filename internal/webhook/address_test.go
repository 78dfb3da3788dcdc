package webhook

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

func TestRefusal(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		public bool
		reason string // a word the reason must contain, when refused
	}{
		{"8.8.8.8", true, ""},
		{"93.184.215.14", true, ""},
		{"1.1.1.1", true, ""},
		{"2606:4700:4700::1111", true, ""},
		{"2a00:1450:4001::200e", true, ""},
		{"::ffff:8.8.8.8", true, ""},
		{"64:ff9b::808:808", true, ""}, // NAT64 of a public address
		{"2002:808:808::1", true, ""},  // 6to4 of a public address

		{"127.0.0.1", false, "loopback"},
		{"127.255.255.254", false, "loopback"},
		{"0.0.0.0", false, "this network"},
		{"0.1.2.3", false, "this network"},
		{"10.0.0.1", false, "private"},
		{"172.16.0.1", false, "private"},
		{"172.31.255.255", false, "private"},
		{"192.168.1.1", false, "private"},
		{"169.254.169.254", false, "metadata"},
		{"169.254.0.1", false, "link-local"},
		{"100.64.0.1", false, "carrier-grade"},
		{"100.127.255.255", false, "carrier-grade"},
		{"224.0.0.1", false, "multicast"},
		{"239.255.255.250", false, "multicast"},
		{"255.255.255.255", false, "broadcast"},
		{"240.0.0.1", false, "reserved"},
		{"192.0.2.1", false, "documentation"},
		{"198.18.0.1", false, "benchmarking"},
		{"192.0.0.170", false, "IETF"},

		{"::1", false, "loopback"},
		{"::", false, "unspecified"},
		{"fe80::1", false, "link-local"},
		{"fe80::1%eth0", false, "zone"},
		{"fc00::1", false, "unique local"},
		{"fd12:3456:789a::1", false, "unique local"},
		{"ff02::1", false, "multicast"},
		{"fec0::1", false, "site-local"},
		{"::ffff:127.0.0.1", false, "IPv4-mapped loopback"},
		{"::ffff:169.254.169.254", false, "IPv4-mapped link-local"},
		{"::ffff:10.0.0.1", false, "IPv4-mapped private"},
		{"::127.0.0.1", false, "IPv4-compatible"},
		{"64:ff9b::7f00:1", false, "NAT64 of loopback"},
		{"64:ff9b::a9fe:a9fe", false, "NAT64 of link-local"},
		{"64:ff9b::a00:1", false, "NAT64 of private"},
		{"64:ff9b:1::a00:1", false, "NAT64"},
		{"2002:7f00:1::1", false, "6to4 of loopback"},
		{"2002:a9fe:a9fe::1", false, "6to4 of link-local"},
		{"2001::1", false, "Teredo"},
		{"2001:db8::1", false, "documentation"},
		{"100::1", false, "discard"},
		{"4000::1", false, "global unicast"},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			why := refusal(netip.MustParseAddr(tc.addr))
			if tc.public {
				if why != "" {
					t.Fatalf("refused as %q, want public", why)
				}
				return
			}
			if why == "" {
				t.Fatal("allowed, want refused")
			}
			if !strings.Contains(why, tc.reason) {
				t.Fatalf("reason %q, want it to mention %q", why, tc.reason)
			}
		})
	}
	if why := refusal(netip.Addr{}); why == "" {
		t.Fatal("the zero Addr is allowed")
	}
}

// fakeDNS answers from a table, so that names can resolve to public
// addresses without a network.
func fakeDNS(table map[string][]string) func(context.Context, string) ([]netip.Addr, error) {
	return func(_ context.Context, host string) ([]netip.Addr, error) {
		names, ok := table[host]
		if !ok {
			return nil, fmt.Errorf("lookup %s: no such host", host)
		}
		addrs := make([]netip.Addr, len(names))
		for i, n := range names {
			addrs[i] = netip.MustParseAddr(n)
		}
		return addrs, nil
	}
}

func TestCheckURL(t *testing.T) {
	dns := fakeDNS(map[string][]string{
		"hooks.example.com":  {"93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"},
		"internal.example":   {"10.1.2.3"},
		"metadata.example":   {"169.254.169.254"},
		"mixed.example":      {"93.184.215.14", "127.0.0.1"},
		"mapped.example":     {"::ffff:192.168.0.1"},
		"ula.example":        {"fd00::1"},
		"cgnat.example":      {"100.100.100.200"},
		"loopback6.example":  {"::1"},
		"nat64-priv.example": {"64:ff9b::c0a8:1"},
	})
	strict := Policy{resolve: dns}
	lax := Policy{resolve: dns, AllowPrivate: true}

	for _, tc := range []struct {
		name   string
		policy Policy
		url    string
		want   error // nil: accepted
	}{
		{"public https", strict, "https://hooks.example.com/flock", nil},
		{"public http with port", strict, "http://hooks.example.com:8080/flock?token=x", nil},
		{"public IPv4 literal", strict, "https://8.8.8.8/", nil},
		{"public IPv6 literal", strict, "https://[2606:4700:4700::1111]/", nil},
		{"upper-case scheme", strict, "HTTPS://hooks.example.com/", nil},

		{"loopback literal", strict, "http://127.0.0.1:8080/", ErrNonPublic},
		{"loopback IPv6", strict, "http://[::1]/", ErrNonPublic},
		{"localhost", Policy{}, "http://localhost/", ErrNonPublic},
		{"private literal", strict, "http://192.168.1.10/", ErrNonPublic},
		{"private name", strict, "https://internal.example/", ErrNonPublic},
		{"metadata literal", strict, "http://169.254.169.254/latest/meta-data/", ErrNonPublic},
		{"metadata name", strict, "http://metadata.example/", ErrNonPublic},
		{"link-local IPv6", strict, "http://[fe80::1%25eth0]/", ErrNonPublic},
		{"ULA literal", strict, "http://[fd00::1]/", ErrNonPublic},
		{"ULA name", strict, "http://ula.example/", ErrNonPublic},
		{"CGNAT literal", strict, "http://100.64.0.1/", ErrNonPublic},
		{"CGNAT name", strict, "http://cgnat.example/", ErrNonPublic},
		{"IPv4-mapped literal", strict, "http://[::ffff:127.0.0.1]/", ErrNonPublic},
		{"IPv4-mapped name", strict, "http://mapped.example/", ErrNonPublic},
		{"NAT64 of private", strict, "http://nat64-priv.example/", ErrNonPublic},
		{"IPv6 loopback name", strict, "http://loopback6.example/", ErrNonPublic},
		{"one private answer among public", strict, "http://mixed.example/", ErrNonPublic},
		{"unspecified", strict, "http://0.0.0.0/", ErrNonPublic},
		{"multicast", strict, "http://224.0.0.1/", ErrNonPublic},

		{"ftp", strict, "ftp://hooks.example.com/", ErrScheme},
		{"file", strict, "file:///etc/passwd", ErrScheme},
		{"javascript", strict, "javascript:alert(1)", ErrScheme},
		{"gopher", strict, "gopher://hooks.example.com/", ErrScheme},
		{"no scheme", strict, "hooks.example.com/flock", ErrScheme},
		{"userinfo", strict, "https://user:pass@hooks.example.com/", ErrUserinfo},
		{"user only", strict, "https://user@hooks.example.com/", ErrUserinfo},
		{"empty host", strict, "http:///flock", ErrNoHost},
		{"port only", strict, "http://:8080/flock", ErrNoHost},
		{"opaque", strict, "http:hooks.example.com", ErrInvalidURL},
		{"bad port", strict, "http://hooks.example.com:99999/", ErrInvalidURL},
		{"port zero", strict, "http://hooks.example.com:0/", ErrInvalidURL},
		{"unparsable", strict, "http://[::1/", ErrInvalidURL},
		{"unresolvable", strict, "https://nowhere.example/", ErrUnresolvable},

		{"AllowPrivate: loopback", lax, "http://127.0.0.1:8080/", nil},
		{"AllowPrivate: private name", lax, "http://internal.example/", nil},
		{"AllowPrivate: still no ftp", lax, "ftp://internal.example/", ErrScheme},
		{"AllowPrivate: still no userinfo", lax, "http://u:p@internal.example/", ErrUserinfo},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.policy.CheckURL(t.Context(), tc.url)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("CheckURL(%q) = %v, want nil", tc.url, err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("CheckURL(%q) = %v, want %v", tc.url, err, tc.want)
			}
			var refused *RefusedError
			if errors.Is(err, ErrNonPublic) && !errors.As(err, &refused) {
				t.Fatalf("CheckURL(%q) = %T, want *RefusedError", tc.url, err)
			}
		})
	}
}

// Tricks that rely on a resolver reading odd IPv4 spellings: whatever the
// system resolver makes of them, they must not pass.
func TestCheckURLOddLoopbackSpellings(t *testing.T) {
	for _, u := range []string{"http://2130706433/", "http://0x7f000001/", "http://127.1/", "http://017700000001/"} {
		if err := (Policy{}).CheckURL(t.Context(), u); err == nil {
			t.Errorf("CheckURL(%q) = nil, want refused", u)
		}
	}
}
