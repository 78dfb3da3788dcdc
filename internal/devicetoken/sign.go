package devicetoken

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// TokenType is the JWT typ header of device tokens. Tokens of other kinds
// signed with the same keys (Sign) must name another type, so that neither
// kind is ever accepted as the other: Verify refuses any typ but this one,
// and VerifySigned any typ but the one its caller names.
const TokenType = "JWT"

// typeOf is a JWS header's typ, "" when absent.
func typeOf(h jose.Header) string {
	typ, _ := h.ExtraHeaders[jose.HeaderType].(string)
	return typ
}

// Sign signs claims (marshalled to JSON, so usually a struct embedding
// jwt.Claims) as a JWT whose typ header is typ, with the current device-token
// signing key. The keys are published in the JWKS like those of device
// tokens, so any replica verifies the result with VerifySigned. typ must not
// be TokenType: a token signed here is never a device token.
func (s *Service) Sign(typ string, claims any) (string, error) {
	if typ == "" || strings.EqualFold(typ, TokenType) {
		return "", fmt.Errorf("devicetoken: sign: typ %q is reserved for device tokens", typ)
	}
	k := s.keys.Load().current()
	signer, err := jose.NewSigner(
		jose.SigningKey{Algorithm: algorithm, Key: jose.JSONWebKey{Key: k.private, KeyID: k.kid}},
		(&jose.SignerOptions{}).WithType(jose.ContentType(typ)),
	)
	if err != nil {
		return "", fmt.Errorf("devicetoken: signer for key %s: %w", k.kid, err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("devicetoken: encode claims: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("devicetoken: sign with key %s: %w", k.kid, err)
	}
	return jws.CompactSerialize()
}

// VerifySigned checks a token made by Sign: its typ must be typ, its
// signature a published key's, and its registered claims must meet expected
// (exp is required; expected.Time defaults to now) with the usual clock skew.
// It then decodes the payload into claims as well. A refused token gives an
// error wrapping ErrInvalidToken; any other error is not the token's fault.
func (s *Service) VerifySigned(ctx context.Context, token, typ string, expected jwt.Expected, claims any) error {
	tok, err := jwt.ParseSigned(token, tokenAlgorithms)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	if got := typeOf(tok.Headers[0]); typ == "" || !strings.EqualFold(got, typ) {
		return fmt.Errorf("%w: typ %q, want %q", ErrInvalidToken, got, typ)
	}
	kid := tok.Headers[0].KeyID
	if kid == "" {
		return fmt.Errorf("%w: no kid", ErrInvalidToken)
	}
	k, err := s.verificationKey(ctx, kid)
	if err != nil {
		return fmt.Errorf("devicetoken: verify with key %q: %w", kid, err)
	}
	if k == nil {
		return fmt.Errorf("%w: unknown key %q", ErrInvalidToken, kid)
	}
	var std jwt.Claims
	if err := tok.Claims(k.public, &std, claims); err != nil {
		return fmt.Errorf("%w: signature: %w", ErrInvalidToken, err)
	}
	if std.Expiry == nil {
		return fmt.Errorf("%w: no exp", ErrInvalidToken)
	}
	if expected.Time.IsZero() {
		expected.Time = s.now()
	}
	if err := std.ValidateWithLeeway(expected, clockSkew); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	return nil
}
