// Package secretbox encrypts small secrets (passwords, tokens of a
// customer's event endpoints) before they are stored in the database, so a
// dump of the database or a backup alone does not reveal them.
//
// The key is AES-256 (32 bytes), given to the process as base64 in
// FLOCK_EVENTS_ENCRYPTION_KEY. A sealed value is
//
//	version (1 byte) | nonce (12 bytes) | AES-256-GCM ciphertext and tag
//
// The version byte leaves room to rotate the algorithm or the key later:
// a reader can tell old ciphertexts from new ones without guessing.
package secretbox

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// KeySize is the length of an AES-256 key.
const KeySize = 32

// version1 is AES-256-GCM with a random 96-bit nonce.
const version1 byte = 1

const nonceSize = 12 // the GCM standard nonce size

var (
	// ErrMalformed reports a sealed value too short to be one, or of a
	// version this build does not know.
	ErrMalformed = errors.New("secretbox: malformed sealed value")
	// ErrDecrypt reports that authentication failed: the value was sealed
	// under another key or for another row (aad), or it was altered.
	ErrDecrypt = errors.New("secretbox: cannot decrypt (wrong key, wrong associated data or tampered value)")
)

// Box seals and opens values with one key. It is safe for concurrent use.
type Box struct {
	aead cipher.AEAD
}

// New returns a Box for a 32-byte key.
func New(key []byte) (*Box, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("secretbox: key is %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secretbox: aes: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("secretbox: gcm: %w", err)
	}
	return &Box{aead: aead}, nil
}

// ParseKey decodes a key given as base64, standard (padded) or raw URL
// alphabet, since operators generate keys with either `openssl rand -base64
// 32` or tools that emit URL-safe text. Surrounding whitespace is ignored so a
// key read from a file with a trailing newline works. Errors never include
// the input: it is a secret.
func ParseKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, errors.New("secretbox: key is empty")
	}
	key, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		key, err = base64.RawURLEncoding.DecodeString(s)
	}
	if err != nil {
		return nil, errors.New("secretbox: key is not base64 (standard or raw URL alphabet)")
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("secretbox: key decodes to %d bytes, want %d", len(key), KeySize)
	}
	return key, nil
}

// Seal encrypts plaintext. aad is not stored but must be given again to Open:
// pass the identity of the row that owns the secret (e.g. the endpoint id) so
// that a ciphertext copied into another row fails to open there.
func (b *Box) Seal(plaintext, aad []byte) []byte {
	out := make([]byte, 1+nonceSize, 1+nonceSize+len(plaintext)+b.aead.Overhead())
	out[0] = version1
	nonce := out[1 : 1+nonceSize]
	// A random 96-bit nonce is safe for far more secrets than this table
	// will ever hold under one key (NIST's bound is 2^32 messages).
	// crypto/rand.Read does not fail on supported platforms.
	_, _ = rand.Read(nonce)
	return b.aead.Seal(out, nonce, plaintext, additionalData(version1, aad))
}

// Open decrypts a value produced by Seal with the same key and aad.
func (b *Box) Open(sealed, aad []byte) ([]byte, error) {
	if len(sealed) < 1+nonceSize+b.aead.Overhead() {
		return nil, fmt.Errorf("%w: %d bytes is too short", ErrMalformed, len(sealed))
	}
	if sealed[0] != version1 {
		return nil, fmt.Errorf("%w: unknown version %d", ErrMalformed, sealed[0])
	}
	nonce, ct := sealed[1:1+nonceSize], sealed[1+nonceSize:]
	pt, err := b.aead.Open(nil, nonce, ct, additionalData(sealed[0], aad))
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt, nil
}

// additionalData authenticates the version byte along with the caller's aad,
// so that a future version cannot be downgraded by rewriting the first byte.
func additionalData(version byte, aad []byte) []byte {
	ad := make([]byte, 0, 1+len(aad))
	ad = append(ad, version)
	return append(ad, aad...)
}
