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

// APIKeyPrefix starts every API key, so secret scanners and the
// Authenticator can tell keys from JWTs.
const APIKeyPrefix = "flk_"

// NewAPIKeySecret returns a key's secret (flk_<id hex>_<32 random bytes>),
// the prefix shown in listings, and the hash that is stored.
func NewAPIKeySecret(id uuid.UUID) (secret, prefix string, hash []byte, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", "", nil, err
	}
	secret = APIKeyPrefix + hex.EncodeToString(id[:]) + "_" + base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(secret))
	return secret, secret[:len(APIKeyPrefix)+8], sum[:], nil
}

var errMalformedKey = errors.New("malformed API key")

// parseAPIKey returns the key id a secret names.
func parseAPIKey(secret string) (uuid.UUID, error) {
	rest, ok := strings.CutPrefix(secret, APIKeyPrefix)
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
