package webhook

import (
	"errors"
	"fmt"
	"net/netip"
)

// ErrNonPublic is matched (errors.Is) by every *RefusedError.
var ErrNonPublic = errors.New("address is not public")

// RefusedError says that a webhook URL's host is, or resolves to, an address
// that deliveries may not reach. Retrying cannot help until the URL or its
// DNS changes.
type RefusedError struct {
	Host   string     // as written in the URL
	Addr   netip.Addr // the offending address
	Reason string     // which range it is in
}

func (e *RefusedError) Error() string {
	if e.Host == "" || e.Host == e.Addr.String() {
		return fmt.Sprintf("address %s is not public (%s): webhooks are only delivered to public internet addresses", e.Addr, e.Reason)
	}
	return fmt.Sprintf("%s resolves to %s, which is not public (%s): webhooks are only delivered to public internet addresses", e.Host, e.Addr, e.Reason)
}

// Is lets callers test for the category without knowing the type.
func (e *RefusedError) Is(target error) bool { return target == ErrNonPublic }

type special struct {
	prefix netip.Prefix
	reason string
}

func ranges(pairs ...string) []special {
	out := make([]special, 0, len(pairs)/2)
	for i := 0; i < len(pairs); i += 2 {
		out = append(out, special{netip.MustParsePrefix(pairs[i]), pairs[i+1]})
	}
	return out
}

// IPv4 ranges that are not reachable public unicast (IANA special-purpose
// registry). A deny list suffices for IPv4 because everything else is
// allocated public space.
var refusedV4 = ranges(
	"0.0.0.0/8", "\"this network\" 0.0.0.0/8",
	"10.0.0.0/8", "private, RFC 1918",
	"100.64.0.0/10", "carrier-grade NAT, RFC 6598",
	"127.0.0.0/8", "loopback",
	"169.254.0.0/16", "link-local, includes cloud metadata 169.254.169.254",
	"172.16.0.0/12", "private, RFC 1918",
	"192.0.0.0/24", "IETF protocol assignments",
	"192.0.2.0/24", "documentation",
	"192.88.99.0/24", "6to4 relay anycast",
	"192.168.0.0/16", "private, RFC 1918",
	"198.18.0.0/15", "benchmarking",
	"198.51.100.0/24", "documentation",
	"203.0.113.0/24", "documentation",
	"224.0.0.0/4", "multicast",
	"240.0.0.0/4", "reserved or broadcast",
)

var (
	// For IPv6 an allow list is safer: only 2000::/3 is global unicast, so
	// whatever the IETF carves out elsewhere later is refused by default.
	globalUnicast = netip.MustParsePrefix("2000::/3")
	// NAT64 (RFC 6052) and 6to4 (RFC 3056) addresses lead to the IPv4 address
	// they embed, so they are as reachable as that address is.
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// Named for a clear error; all lie outside 2000::/3 and would be refused
// anyway.
var outsideGlobalV6 = ranges(
	"::/128", "unspecified",
	"::1/128", "loopback",
	"::/96", "IPv4-compatible (deprecated)",
	"64:ff9b:1::/48", "local-use NAT64, RFC 8215",
	"100::/64", "discard-only",
	"fc00::/7", "unique local (ULA)",
	"fe80::/10", "link-local",
	"fec0::/10", "site-local (deprecated)",
	"ff00::/8", "multicast",
)

var refusedGlobalV6 = ranges(
	"2001::/23", "IETF protocol assignments, includes Teredo",
	"2001:db8::/32", "documentation",
	"3fff::/20", "documentation",
)

// refusal returns why deliveries may not reach a, or "" when a is public.
func refusal(a netip.Addr) string {
	if !a.IsValid() {
		return "invalid address"
	}
	// Zoned addresses are scoped to one host's interface, never public, and
	// netip.Prefix.Contains is false for them, so they must not reach the
	// range checks below.
	if a.Zone() != "" {
		return "scoped address with zone " + a.Zone()
	}
	if a.Is4In6() {
		if why := refusal(a.Unmap()); why != "" {
			return "IPv4-mapped " + why
		}
		return ""
	}
	if a.Is4() {
		for _, r := range refusedV4 {
			if r.prefix.Contains(a) {
				return r.reason
			}
		}
		return ""
	}
	if nat64.Contains(a) {
		b := a.As16()
		if why := refusal(netip.AddrFrom4([4]byte(b[12:16]))); why != "" {
			return "NAT64 of " + why
		}
		return ""
	}
	if sixToFour.Contains(a) {
		b := a.As16()
		if why := refusal(netip.AddrFrom4([4]byte(b[2:6]))); why != "" {
			return "6to4 of " + why
		}
		return ""
	}
	if !globalUnicast.Contains(a) {
		for _, r := range outsideGlobalV6 {
			if r.prefix.Contains(a) {
				return r.reason
			}
		}
		return "not global unicast (outside 2000::/3)"
	}
	for _, r := range refusedGlobalV6 {
		if r.prefix.Contains(a) {
			return r.reason
		}
	}
	return ""
}
