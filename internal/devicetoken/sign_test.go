package devicetoken

import (
	"errors"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

const testType = "test+jwt"

type testClaims struct {
	jwt.Claims
	Extra string `json:"extra"`
}

func signTest(t *testing.T, s *Service, typ string, ttl time.Duration) string {
	t.Helper()
	now := time.Now()
	tok, err := s.Sign(typ, testClaims{
		Claims: jwt.Claims{Issuer: "reg", Audience: jwt.Audience{"svc"}, Subject: "x",
			IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(ttl))},
		Extra: "hello",
	})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestSignedTokensAreNotDeviceTokens: a token of another type signed with the
// device-token keys verifies as that type only, and a device token never
// verifies as another type.
func TestSignedTokensAreNotDeviceTokens(t *testing.T) {
	pool := pgtest.Pool(t)
	s := newService(t, pool, Config{})
	replica := newService(t, pool, Config{})
	want := jwt.Expected{Issuer: "reg", AnyAudience: jwt.Audience{"svc"}}

	tok := signTest(t, s, testType, time.Minute)
	var c testClaims
	if err := replica.VerifySigned(t.Context(), tok, testType, want, &c); err != nil {
		t.Fatalf("VerifySigned on a replica: %v", err)
	}
	if c.Extra != "hello" || c.Subject != "x" {
		t.Errorf("claims = %+v", c)
	}
	if _, err := s.Verify(t.Context(), tok); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("Verify(%s token) = %v, want ErrInvalidToken", testType, err)
	}
	if err := s.VerifySigned(t.Context(), tok, "other+jwt", want, &c); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("VerifySigned with another typ = %v, want ErrInvalidToken", err)
	}

	dev, _, err := s.Issue(t.Context(), uuid.New(), uuid.New(), uuid.New())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Verify(t.Context(), dev); err != nil {
		t.Fatalf("Verify(device token): %v", err)
	}
	// Sign refuses the device token's typ, so nothing it signs can pass.
	if _, err := s.Sign(TokenType, testClaims{}); err == nil {
		t.Error("Sign with the device token's typ succeeded")
	}
	if err := s.VerifySigned(t.Context(), dev, testType, jwt.Expected{Issuer: testIssuer}, &c); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("VerifySigned(device token) = %v, want ErrInvalidToken", err)
	}

	if err := s.VerifySigned(t.Context(), tok, testType, jwt.Expected{Issuer: "reg", AnyAudience: jwt.Audience{"elsewhere"}}, &c); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("VerifySigned with another audience = %v, want ErrInvalidToken", err)
	}
	expired := signTest(t, s, testType, -time.Hour)
	if err := s.VerifySigned(t.Context(), expired, testType, want, &c); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("VerifySigned(expired) = %v, want ErrInvalidToken", err)
	}
}
