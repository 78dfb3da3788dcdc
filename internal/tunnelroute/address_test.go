package tunnelroute

import (
	"net/netip"
	"testing"
)

func TestAddress(t *testing.T) {
	for _, c := range []struct {
		prefix string
		n      int64
		want   string // "" = error
	}{
		{DefaultPrefix, 1, "fd66:6c6b:7475:6e00::1"},
		{DefaultPrefix, 2, "fd66:6c6b:7475:6e00::2"},
		{DefaultPrefix, 70000, "fd66:6c6b:7475:6e00::1:1170"},
		{"100.64.0.0/10", 1, "100.64.0.1"},
		{"100.64.0.0/10", 256, "100.64.1.0"},
		{"100.64.0.0/10", 1 << 22, ""},
		{"fd00::/120", 256, ""},
		{DefaultPrefix, 0, ""},
	} {
		p := netip.MustParsePrefix(c.prefix)
		got, err := Address(p, c.n)
		if c.want == "" {
			if err == nil {
				t.Errorf("Address(%s, %d) = %s, want an error", c.prefix, c.n, got)
			}
			continue
		}
		if err != nil || got.String() != c.want {
			t.Errorf("Address(%s, %d) = %s, %v; want %s", c.prefix, c.n, got, err, c.want)
		}
	}
}

func TestParsePrefix(t *testing.T) {
	for s, ok := range map[string]bool{DefaultPrefix: true, "100.64.0.0/10": true, "10.0.0.0/30": false, "fd00::/124": false, "nope": false} {
		if _, err := ParsePrefix(s); (err == nil) != ok {
			t.Errorf("ParsePrefix(%q) error %v, want ok=%v", s, err, ok)
		}
	}
}
