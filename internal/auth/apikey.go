package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"

	"github.com/google/uuid"
)

// Secret prefixes: they let secret scanners spot leaked keys and the
// Authenticator tell keys from JWTs.
const (
	APIKeyPrefix          = "flk_"
	ProvisioningKeyPrefix = "flp_"
)

// NewAPIKeySecret returns a key's secret (flk_<id hex>_<32 random bytes>),
// the prefix shown in listings, and the hash that is stored.
func NewAPIKeySecret(id uuid.UUID) (secret, prefix string, hash []byte, err error) {
	return NewSecret(APIKeyPrefix, id)
}

// NewSecret returns a secret naming id (<kind><id hex>_<32 random bytes>),
// the prefix shown in listings, and the SHA-256 that is stored.
func NewSecret(kind string, id uuid.UUID) (secret, prefix string, hash []byte, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", nil, err
	}
	secret = kind + hex.EncodeToString(id[:]) + "_" + base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(secret))
	return secret, secret[:len(kind)+8], sum[:], nil
}

// ParseSecret returns the id a secret of the given kind names.
func ParseSecret(kind, secret string) (uuid.UUID, error) { return parseSecret(kind, secret) }

// SecretMatches compares a secret with a stored hash in constant time.
func SecretMatches(secret string, hash []byte) bool { return secretMatches(secret, hash) }

var errMalformedKey = errors.New("malformed key")

// parseAPIKey returns the key id a secret names.
func parseAPIKey(secret string) (uuid.UUID, error) { return parseSecret(APIKeyPrefix, secret) }

func parseSecret(kind, secret string) (uuid.UUID, error) {
	rest, ok := strings.CutPrefix(secret, kind)
	if !ok {
		return uuid.Nil, errMalformedKey
	}
	idHex, _, ok := strings.Cut(rest, "_")
	if !ok || len(idHex) != 32 {
		return uuid.Nil, errMalformedKey
	}
	var id uuid.UUID
	if _, err := hex.Decode(id[:], []byte(idHex)); err != nil {
		return uuid.Nil, errMalformedKey
	}
	return id, nil
}

// secretMatches compares in constant time.
func secretMatches(secret string, hash []byte) bool {
	sum := sha256.Sum256([]byte(secret))
	return subtle.ConstantTimeCompare(sum[:], hash) == 1
}
