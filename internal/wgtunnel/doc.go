// Package wgtunnel is the userspace WireGuard overlay between the platform and
// its devices: a Server per tunnel replica and a Client per device, both built
// on wireguard-go with a gVisor netstack instead of a kernel TUN, so neither
// needs root, CAP_NET_ADMIN or a network namespace.
//
// Peers are added to a Server lazily. All replicas share one private key, so a
// device can handshake with whichever replica its UDP packets reach, and
// configuring every device on every replica would make each replica's memory
// and handshake-table size grow with the whole fleet (wireguard-go allocates
// queues per peer) rather than with the devices actually connected to it.
// Instead the Server inspects each handshake initiation before wireguard-go
// does, recovers the initiator's static key with the first Noise IKpsk2 steps,
// asks Lookup which device owns that key and adds just that peer. A device's
// peer therefore lives on the replica it last handshook with; the Handshake
// callback tells the platform which one, and idle peers are removed so a
// device that moved to another replica does not linger.
//
// The Server's netstack has forwarding disabled (gVisor's default) and serves
// nothing: it only originates TCP connections to devices (DialTCP), so devices
// can neither reach each other nor any platform service through the overlay.
package wgtunnel
