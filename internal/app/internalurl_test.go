package app

import "testing"

func TestInternalURL(t *testing.T) {
	for _, c := range []struct{ set, host, listen, want string }{
		{"", "", "[::]:8080", "http://127.0.0.1:8080"},
		{"", "10.1.2.3", "[::]:8080", "http://10.1.2.3:8080"},
		{"", "fd00:10:244::17", "[::]:8080", "http://[fd00:10:244::17]:8080"},
		{"", "fd00::1", "127.0.0.1:39123", "http://[fd00::1]:39123"},
		{"http://flock-tunnel-0.flock:8080", "10.1.2.3", "[::]:8080", "http://flock-tunnel-0.flock:8080"},
	} {
		if got := internalURL(c.set, c.host, c.listen); got != c.want {
			t.Errorf("internalURL(%q, %q, %q) = %q, want %q", c.set, c.host, c.listen, got, c.want)
		}
	}
}
