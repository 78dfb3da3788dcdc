package wgtunnel

import (
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
)

// The first steps of WireGuard's Noise_IKpsk2 responder, enough to learn the
// initiator's static key before wireguard-go sees the packet. Constants and
// the KDF are copied from wireguard-go (device/noise-protocol.go,
// device/noise-helpers.go, device/cookie.go) because it does not export them.
const (
	noiseConstruction = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
	wgIdentifier      = "WireGuard v1 zx2c4 Jason@zx2c4.com"
	wgLabelMAC1       = "mac1----"

	msgInitiationType = 1
	msgInitiationSize = 148

	offEphemeral = 8
	offStatic    = offEphemeral + 32
	offTimestamp = offStatic + 32 + chacha20poly1305.Overhead
	offMAC1      = offTimestamp + 12 + chacha20poly1305.Overhead
	offMAC2      = offMAC1 + blake2s.Size128
)

var (
	initialChainKey [blake2s.Size]byte
	initialHash     [blake2s.Size]byte
	zeroNonce       [chacha20poly1305.NonceSize]byte

	errBadMAC    = errors.New("bad mac1")
	errBadStatic = errors.New("undecryptable static key")
)

func init() {
	initialChainKey = blake2s.Sum256([]byte(noiseConstruction))
	mixHash(&initialHash, &initialChainKey, []byte(wgIdentifier))
}

func mixHash(dst, h *[blake2s.Size]byte, data []byte) {
	d, _ := blake2s.New256(nil)
	d.Write(h[:])
	d.Write(data)
	d.Sum(dst[:0])
}

func newBlake2s() hash.Hash {
	h, _ := blake2s.New256(nil)
	return h
}

func hmac1(sum *[blake2s.Size]byte, key, in0 []byte) {
	mac := hmac.New(newBlake2s, key)
	mac.Write(in0)
	mac.Sum(sum[:0])
}

func hmac2(sum *[blake2s.Size]byte, key, in0, in1 []byte) {
	mac := hmac.New(newBlake2s, key)
	mac.Write(in0)
	mac.Write(in1)
	mac.Sum(sum[:0])
}

func kdf1(t0 *[blake2s.Size]byte, key, input []byte) {
	hmac1(t0, key, input)
	hmac1(t0, t0[:], []byte{0x1})
}

func kdf2(t0, t1 *[blake2s.Size]byte, key, input []byte) {
	var prk [blake2s.Size]byte
	hmac1(&prk, key, input)
	hmac1(t0, prk[:], []byte{0x1})
	hmac2(t1, prk[:], t0[:], []byte{0x2})
}

// initiationOpener holds what depends only on the responder's static key, so
// the per-packet work is one DH, a few BLAKE2s and one AEAD open.
type initiationOpener struct {
	priv    Key
	mac1Key [blake2s.Size]byte
	hash0   [blake2s.Size]byte // HASH(InitialHash || S_pub_r)
}

func newInitiationOpener(priv Key) *initiationOpener {
	o := &initiationOpener{priv: priv}
	pub := priv.PublicKey()
	d, _ := blake2s.New256(nil)
	d.Write([]byte(wgLabelMAC1))
	d.Write(pub[:])
	d.Sum(o.mac1Key[:0])
	mixHash(&o.hash0, &initialHash, pub[:])
	return o
}

// isInitiation reports whether a datagram has the shape of a handshake
// initiation; anything else is wireguard-go's business alone.
func isInitiation(msg []byte) bool {
	return len(msg) == msgInitiationSize && binary.LittleEndian.Uint32(msg) == msgInitiationType
}

func (o *initiationOpener) mac1(msg []byte) [blake2s.Size128]byte {
	var sum [blake2s.Size128]byte
	mac, _ := blake2s.New128(o.mac1Key[:])
	mac.Write(msg[:offMAC1])
	mac.Sum(sum[:0])
	return sum
}

// openStatic checks mac1 (cheap, so garbage is rejected before the DH) and
// returns the initiator's static public key.
func (o *initiationOpener) openStatic(msg []byte) (Key, error) {
	if !isInitiation(msg) {
		return Key{}, fmt.Errorf("not a handshake initiation")
	}
	want := o.mac1(msg)
	if !hmac.Equal(want[:], msg[offMAC1:offMAC2]) {
		return Key{}, errBadMAC
	}
	eph := msg[offEphemeral:offStatic]
	var h, ck, key [blake2s.Size]byte
	mixHash(&h, &o.hash0, eph)
	kdf1(&ck, initialChainKey[:], eph)
	// X25519 rejects low-order points (an all-zero shared secret) as
	// wireguard-go's sharedSecret does.
	ss, err := curve25519.X25519(o.priv[:], eph)
	if err != nil {
		return Key{}, errBadStatic
	}
	kdf2(&ck, &key, ck[:], ss)
	aead, _ := chacha20poly1305.New(key[:])
	var pub Key
	if _, err := aead.Open(pub[:0], zeroNonce[:], msg[offStatic:offTimestamp], h[:]); err != nil {
		return Key{}, errBadStatic
	}
	return pub, nil
}
