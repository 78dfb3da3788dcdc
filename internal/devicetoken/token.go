package devicetoken

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"
)

// ErrInvalidToken is wrapped by every error Verify returns for a token that
// must be refused; other errors mean Verify could not decide.
var ErrInvalidToken = errors.New("invalid device token")

// Claims is what a verified device token says.
type Claims struct {
	DeviceID uuid.UUID
	OrgID    uuid.UUID
	FleetID  uuid.UUID
	Expiry   time.Time
}

// tokenClaims is the payload of a device token, marshalled in one pass.
type tokenClaims struct {
	jwt.Claims
	Org   string `json:"org"`
	Fleet string `json:"fleet"`
}

var tokenAlgorithms = []jose.SignatureAlgorithm{algorithm}

// Issue signs a device token for the device, valid for TokenTTL. expiresAt
// is the token's exp, which has whole seconds.
func (s *Service) Issue(_ context.Context, deviceID, orgID, fleetID uuid.UUID) (token string, expiresAt time.Time, err error) {
	k := s.keys.Load().current()
	now := s.now()
	exp := jwt.NewNumericDate(now.Add(TokenTTL))
	c := tokenClaims{
		Claims: jwt.Claims{
			Issuer:    s.cfg.Issuer,
			Subject:   deviceID.String(),
			Audience:  jwt.Audience{s.cfg.Issuer},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			Expiry:    exp,
			ID:        rand.Text(),
		},
		Org:   orgID.String(),
		Fleet: fleetID.String(),
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("devicetoken: encode claims: %w", err)
	}
	jws, err := k.signer.Sign(payload)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("devicetoken: sign with key %s: %w", k.kid, err)
	}
	token, err = jws.CompactSerialize()
	if err != nil {
		return "", time.Time{}, fmt.Errorf("devicetoken: serialize token: %w", err)
	}
	return token, exp.Time(), nil
}

// Verify checks a device token's signature against the published keys and
// its iss, aud, exp and nbf, and returns its claims. A refused token gives an
// error wrapping ErrInvalidToken; any other error (the database, when the
// token names a key this replica has not loaded) is not the token's fault.
func (s *Service) Verify(ctx context.Context, token string) (*Claims, error) {
	tok, err := jwt.ParseSigned(token, tokenAlgorithms)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	// Other tokens signed with the same keys (Sign) carry another typ.
	if typ := typeOf(tok.Headers[0]); typ != TokenType {
		return nil, fmt.Errorf("%w: typ %q is not a device token's", ErrInvalidToken, typ)
	}
	kid := tok.Headers[0].KeyID
	if kid == "" {
		return nil, fmt.Errorf("%w: no kid", ErrInvalidToken)
	}
	k, err := s.verificationKey(ctx, kid)
	if err != nil {
		return nil, fmt.Errorf("devicetoken: verify with key %q: %w", kid, err)
	}
	if k == nil {
		return nil, fmt.Errorf("%w: unknown key %q", ErrInvalidToken, kid)
	}
	var c tokenClaims
	if err := tok.Claims(k.public, &c); err != nil {
		return nil, fmt.Errorf("%w: signature: %w", ErrInvalidToken, err)
	}
	if c.Expiry == nil {
		return nil, fmt.Errorf("%w: no exp", ErrInvalidToken)
	}
	err = c.ValidateWithLeeway(jwt.Expected{
		Issuer:      s.cfg.Issuer,
		AnyAudience: jwt.Audience{s.cfg.Issuer},
		Time:        s.now(),
	}, clockSkew)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	out := &Claims{Expiry: c.Expiry.Time()}
	for _, f := range []struct {
		name, value string
		into        *uuid.UUID
	}{
		{"sub", c.Subject, &out.DeviceID},
		{"org", c.Org, &out.OrgID},
		{"fleet", c.Fleet, &out.FleetID},
	} {
		if *f.into, err = uuid.Parse(f.value); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInvalidToken, f.name, err)
		}
	}
	return out, nil
}
