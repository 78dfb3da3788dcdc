package devicetoken

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrInvalidAssertion is wrapped by every error VerifyAssertion and
// AssertionSubject return for an assertion that must be refused.
var ErrInvalidAssertion = errors.New("invalid device assertion")

// ErrReplayedAssertion is returned for an assertion whose jti was used
// before. It wraps ErrInvalidAssertion, so callers that only tell valid from
// invalid need not know about it.
var ErrReplayedAssertion error = &childError{msg: "device assertion replayed", parent: ErrInvalidAssertion}

// childError is a sentinel that is also its parent under errors.Is, while
// keeping its own message.
type childError struct {
	msg    string
	parent error
}

func (e *childError) Error() string { return e.msg }
func (e *childError) Unwrap() error { return e.parent }

// maxJTILength bounds what a device can make the database store.
const maxJTILength = 200

// Execer runs a statement; *pgxpool.Pool, *pgx.Conn and pgx.Tx all are one,
// so the jti can be recorded in the caller's transaction.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// VerifyAssertion checks an assertion the device expectDevice signed with
// the private half of publicKey (its registered key, 32 bytes raw) to obtain
// a token, then records its jti through x so that it is accepted only once.
// A refused assertion gives an error wrapping ErrInvalidAssertion, or
// ErrReplayedAssertion for a jti seen before; any other error is not the
// assertion's fault.
func (s *Service) VerifyAssertion(ctx context.Context, x Execer, assertion string, expectDevice uuid.UUID, publicKey ed25519.PublicKey) error {
	// A malformed stored key is our data's fault, not the device's.
	if len(publicKey) != ed25519.PublicKeySize {
		return fmt.Errorf("devicetoken: public key of device %s has %d bytes, want %d", expectDevice, len(publicKey), ed25519.PublicKeySize)
	}
	tok, err := jwt.ParseSigned(assertion, tokenAlgorithms)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidAssertion, err)
	}
	var c jwt.Claims
	if err := tok.Claims(publicKey, &c); err != nil {
		return fmt.Errorf("%w: signature: %w", ErrInvalidAssertion, err)
	}
	device := expectDevice.String()
	now := s.now()
	switch {
	case c.Issuer != device:
		return fmt.Errorf("%w: iss %q is not device %s", ErrInvalidAssertion, c.Issuer, device)
	case c.Subject != c.Issuer:
		return fmt.Errorf("%w: sub %q differs from iss", ErrInvalidAssertion, c.Subject)
	case !c.Audience.Contains(s.cfg.TokenEndpoint):
		return fmt.Errorf("%w: aud %q does not name %s", ErrInvalidAssertion, []string(c.Audience), s.cfg.TokenEndpoint)
	case c.Expiry == nil:
		return fmt.Errorf("%w: no exp", ErrInvalidAssertion)
	case c.Expiry.Time().After(now.Add(MaxAssertionLifetime + clockSkew)):
		return fmt.Errorf("%w: exp is more than %s ahead", ErrInvalidAssertion, MaxAssertionLifetime)
	case c.ID == "":
		return fmt.Errorf("%w: no jti", ErrInvalidAssertion)
	case utf8.RuneCountInString(c.ID) > maxJTILength:
		return fmt.Errorf("%w: jti longer than %d characters", ErrInvalidAssertion, maxJTILength)
	case strings.ContainsRune(c.ID, 0):
		// PostgreSQL text cannot hold NUL; refused here rather than failing
		// the insert.
		return fmt.Errorf("%w: jti contains NUL", ErrInvalidAssertion)
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Time: now}, clockSkew); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidAssertion, err)
	}
	tag, err := x.Exec(ctx, sqlRecordJTI, expectDevice, c.ID, c.Expiry.Time())
	if err != nil {
		return fmt.Errorf("devicetoken: record assertion jti: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: jti %q of device %s", ErrReplayedAssertion, c.ID, device)
	}
	return nil
}

// AssertionSubject returns the device an assertion claims to come from,
// without verifying anything, so the caller can load that device's key.
func AssertionSubject(assertion string) (uuid.UUID, error) {
	tok, err := jwt.ParseSigned(assertion, tokenAlgorithms)
	if err != nil {
		return uuid.Nil, fmt.Errorf("%w: %w", ErrInvalidAssertion, err)
	}
	var c jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
		return uuid.Nil, fmt.Errorf("%w: %w", ErrInvalidAssertion, err)
	}
	id, err := uuid.Parse(c.Issuer)
	if err != nil {
		return uuid.Nil, fmt.Errorf("%w: iss: %w", ErrInvalidAssertion, err)
	}
	// VerifyAssertion compares iss as a string, so other spellings of the
	// same uuid are refused here already.
	if id.String() != c.Issuer {
		return uuid.Nil, fmt.Errorf("%w: iss %q is not a lowercase hyphenated uuid", ErrInvalidAssertion, c.Issuer)
	}
	return id, nil
}
