package devicetoken

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"
)

// SignAssertion builds an assertion as a device would: iss = sub = deviceID,
// aud = tokenEndpoint, iat = now, exp = now+ttl, a random jti, signed EdDSA
// with priv. It is for tests and load generators; devices sign their own.
func SignAssertion(priv ed25519.PrivateKey, deviceID uuid.UUID, tokenEndpoint string, ttl time.Duration) (string, error) {
	now := time.Now()
	id := deviceID.String()
	return signClaims(priv, jwt.Claims{
		Issuer:   id,
		Subject:  id,
		Audience: jwt.Audience{tokenEndpoint},
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(ttl)),
		ID:       rand.Text(),
	})
}

// signClaims signs any claims with priv, so tests can also build the
// assertions a well-behaved device would not.
func signClaims(priv ed25519.PrivateKey, claims any) (string, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA, Key: priv}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", fmt.Errorf("devicetoken: assertion signer: %w", err)
	}
	s, err := jwt.Signed(signer).Claims(claims).Serialize()
	if err != nil {
		return "", fmt.Errorf("devicetoken: sign assertion: %w", err)
	}
	return s, nil
}
