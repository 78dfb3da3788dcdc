package tunnelroute

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// DefaultPrefix is the overlay network unless FLOCK_TUNNEL_PREFIX says
// otherwise: an IPv6 unique local prefix, so it never collides with the
// networks devices sit on (100.64.0.0/10, the other choice, is also what
// carrier-grade NAT hands out), and a /64 holds more devices than any
// deployment will.
const DefaultPrefix = "fd66:6c6b:7475:6e00::/64"

// ServerHost is the host number of the tunnel servers' own address;
// devices get 2 and up, in order of their first registration.
const ServerHost = 1

// Address is host number n in prefix: the prefix's first address plus n.
func Address(prefix netip.Prefix, n int64) (netip.Addr, error) {
	if n < 1 {
		return netip.Addr{}, fmt.Errorf("host number %d out of range", n)
	}
	base := prefix.Masked().Addr()
	var a netip.Addr
	if base.Is4() {
		b := base.As4()
		v := uint64(binary.BigEndian.Uint32(b[:])) + uint64(n)
		if v > 0xffffffff {
			return netip.Addr{}, fmt.Errorf("host number %d past the end of %s", n, prefix)
		}
		binary.BigEndian.PutUint32(b[:], uint32(v))
		a = netip.AddrFrom4(b)
	} else {
		b := base.As16()
		lo := binary.BigEndian.Uint64(b[8:])
		v := lo + uint64(n)
		if v < lo {
			return netip.Addr{}, fmt.Errorf("host number %d past the end of %s", n, prefix)
		}
		binary.BigEndian.PutUint64(b[8:], v)
		a = netip.AddrFrom16(b)
	}
	if !prefix.Contains(a) {
		return netip.Addr{}, fmt.Errorf("host number %d past the end of %s: the overlay prefix is full", n, prefix)
	}
	return a, nil
}

// ParsePrefix reads FLOCK_TUNNEL_PREFIX: an IPv6 prefix of at most /120
// or an IPv4 one of at most /24.
func ParsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("overlay prefix %q: %w", s, err)
	}
	if (p.Addr().Is4() && p.Bits() > 24) || (p.Addr().Is6() && p.Bits() > 120) || p.Addr().Is4In6() {
		return p, fmt.Errorf("overlay prefix %s is too small for a fleet", s)
	}
	return p.Masked(), nil
}
