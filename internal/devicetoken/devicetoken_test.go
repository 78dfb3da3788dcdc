package devicetoken

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

const testIssuer = "http://flock.test"

// newService is New with the test issuer and a silent log unless cfg says
// otherwise.
func newService(t testing.TB, pool *pgxpool.Pool, cfg Config) *Service {
	t.Helper()
	if cfg.Issuer == "" {
		cfg.Issuer = testIssuer
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	s, err := New(t.Context(), pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// ensureJTITable creates device_assertion_jtis as its migration does, in
// case this tree's migrations do not have it yet; otherwise a no-op.
func ensureJTITable(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	_, err := pool.Exec(t.Context(), `CREATE TABLE IF NOT EXISTS device_assertion_jtis (device_id uuid NOT NULL, jti text NOT NULL, expires_at timestamptz NOT NULL, PRIMARY KEY (device_id, jti))`)
	if err != nil {
		t.Fatal(err)
	}
}

func currentKID(s *Service) string { return s.keys.Load().current().kid }

func headerKID(t *testing.T, token string) string {
	t.Helper()
	jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	return jws.Signatures[0].Header.KeyID
}

func storedKIDs(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := db.New(pool).SigningKeyList(t.Context(), Purpose)
	if err != nil {
		t.Fatal(err)
	}
	kids := make([]string, len(rows))
	for i, r := range rows {
		kids[i] = r.Kid
	}
	return kids
}

func jwksKIDs(t *testing.T, s *Service) []string {
	t.Helper()
	set, err := s.JWKS(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range set.Keys {
		kids = append(kids, k.KeyID)
	}
	return kids
}

func issue(t testing.TB, s *Service) string {
	t.Helper()
	token, _, err := s.Issue(t.Context(), uuid.New(), uuid.New(), uuid.New())
	if err != nil {
		t.Fatal(err)
	}
	return token
}

// signToken signs claims as a device token would be, with any signer.
func signToken(t *testing.T, signer jose.Signer, claims any) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	token, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return token
}

func newSigner(t *testing.T, alg jose.SignatureAlgorithm, key any, kid string) jose.Signer {
	t.Helper()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return signer
}

func newKey(t testing.TB) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func TestIssueVerify(t *testing.T) {
	pool := pgtest.Pool(t)
	s := newService(t, pool, Config{})
	device, org, fleet := uuid.New(), uuid.New(), uuid.New()

	// Services on the same database share the keys, so these differ from s
	// only in what the test changes.
	other := newService(t, pool, Config{Issuer: "http://other.test"})
	past := newService(t, pool, Config{})
	past.now = func() time.Time { return time.Now().Add(-TokenTTL - time.Minute) }
	future := newService(t, pool, Config{})
	future.now = func() time.Time { return time.Now().Add(2 * time.Minute) }

	current := s.keys.Load().current()
	_, strangerKey := newKey(t)
	claims := func(mod func(*tokenClaims)) tokenClaims {
		now := time.Now()
		c := tokenClaims{
			Claims: jwt.Claims{
				Issuer: testIssuer, Subject: device.String(), Audience: jwt.Audience{testIssuer},
				IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now),
				Expiry: jwt.NewNumericDate(now.Add(time.Minute)), ID: rand.Text(),
			},
			Org: org.String(), Fleet: fleet.String(),
		}
		if mod != nil {
			mod(&c)
		}
		return c
	}
	issueBy := func(s *Service) func(t *testing.T) string {
		return func(t *testing.T) string {
			token, _, err := s.Issue(t.Context(), device, org, fleet)
			if err != nil {
				t.Fatal(err)
			}
			return token
		}
	}

	tests := []struct {
		name  string
		token func(t *testing.T) string
		valid bool
	}{
		{"issued here", issueBy(s), true},
		{"hand-built with the service key", func(t *testing.T) string { return signToken(t, current.signer, claims(nil)) }, true},
		{"other issuer", issueBy(other), false},
		{"expired", issueBy(past), false},
		{"not yet valid", issueBy(future), false},
		{"key not in the database", func(t *testing.T) string {
			return signToken(t, newSigner(t, jose.EdDSA, strangerKey, "dev-0000000000000000"), claims(nil))
		}, false},
		{"another key under a published kid", func(t *testing.T) string {
			return signToken(t, newSigner(t, jose.EdDSA, strangerKey, current.kid), claims(nil))
		}, false},
		{"no kid", func(t *testing.T) string {
			return signToken(t, newSigner(t, jose.EdDSA, strangerKey, ""), claims(nil))
		}, false},
		{"HS256 keyed with the public key", func(t *testing.T) string {
			return signToken(t, newSigner(t, jose.HS256, []byte(current.public), current.kid), claims(nil))
		}, false},
		{"tampered payload", func(t *testing.T) string {
			parts := strings.Split(issueBy(s)(t), ".")
			payload, err := base64.RawURLEncoding.DecodeString(parts[1])
			if err != nil {
				t.Fatal(err)
			}
			payload = []byte(strings.Replace(string(payload), device.String(), uuid.NewString(), 1))
			parts[1] = base64.RawURLEncoding.EncodeToString(payload)
			return strings.Join(parts, ".")
		}, false},
		{"wrong audience", func(t *testing.T) string {
			return signToken(t, current.signer, claims(func(c *tokenClaims) { c.Audience = jwt.Audience{"http://other.test"} }))
		}, false},
		{"no exp", func(t *testing.T) string {
			return signToken(t, current.signer, claims(func(c *tokenClaims) { c.Expiry = nil }))
		}, false},
		{"org not a uuid", func(t *testing.T) string {
			return signToken(t, current.signer, claims(func(c *tokenClaims) { c.Org = "acme" }))
		}, false},
		{"not a JWT", func(*testing.T) string { return "not.a.jwt" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.Verify(t.Context(), tt.token(t))
			if !tt.valid {
				if !errors.Is(err, ErrInvalidToken) {
					t.Fatalf("Verify: %v, want ErrInvalidToken", err)
				}
				t.Logf("refused: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if got.DeviceID != device || got.OrgID != org || got.FleetID != fleet {
				t.Errorf("claims %+v, want device %s org %s fleet %s", got, device, org, fleet)
			}
		})
	}

	t.Run("expiry", func(t *testing.T) {
		token, exp, err := s.Issue(t.Context(), device, org, fleet)
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Verify(t.Context(), token)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Expiry.Equal(exp) {
			t.Errorf("Verify says exp %s, Issue said %s", got.Expiry, exp)
		}
		if d := exp.Sub(time.Now()); d <= 0 || d > TokenTTL {
			t.Errorf("exp %s ahead, want within TokenTTL", d)
		}
	})
}

func TestRotation(t *testing.T) {
	pool := pgtest.Pool(t)
	ctx := t.Context()
	s := newService(t, pool, Config{})
	// Loaded before the rotations, as a replica that started earlier.
	replica := newService(t, pool, Config{})
	kid0 := currentKID(s)
	tok0 := issue(t, s)

	kid1, err := s.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tok1 := issue(t, s)
	if got := headerKID(t, tok1); got != kid1 || kid1 == kid0 {
		t.Fatalf("token after rotation has kid %q, want the new %q (old %q)", got, kid1, kid0)
	}
	for name, token := range map[string]string{"before": tok0, "after": tok1} {
		if _, err := s.Verify(ctx, token); err != nil {
			t.Errorf("token issued %s the rotation: %v", name, err)
		}
	}
	if got, want := jwksKIDs(t, s), []string{kid1, kid0}; !slices.Equal(got, want) {
		t.Errorf("JWKS %v, want %v", got, want)
	}

	// The replica has never seen kid1: it must reload to verify tok1.
	if _, err := replica.Verify(ctx, tok1); err != nil {
		t.Fatalf("replica: %v", err)
	}
	if got := currentKID(replica); got != kid1 {
		t.Errorf("replica signs with %q after reloading, want %q", got, kid1)
	}

	kid2, err := s.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tok2 := issue(t, s)
	if _, err := s.Verify(ctx, tok0); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("token of the key before the previous: %v, want ErrInvalidToken", err)
	}
	if _, err := s.Verify(ctx, tok1); err != nil {
		t.Errorf("token of the previous key: %v", err)
	}
	want := []string{kid2, kid1}
	if got := jwksKIDs(t, s); !slices.Equal(got, want) {
		t.Errorf("JWKS %v, want %v", got, want)
	}
	if got := storedKIDs(t, pool); !slices.Equal(got, want) {
		t.Errorf("database holds %v, want %v", got, want)
	}

	// The replica reloaded for tok1 a moment ago: an unknown kid now is
	// refused without another read, until the interval has passed.
	replica.missReloadEvery = time.Hour
	if _, err := replica.Verify(ctx, tok2); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("replica within the reload interval: %v, want ErrInvalidToken", err)
	}
	replica.missReloadEvery = 0
	if _, err := replica.Verify(ctx, tok2); err != nil {
		t.Errorf("replica after the reload interval: %v", err)
	}
	if _, err := replica.Verify(ctx, tok0); !errors.Is(err, ErrInvalidToken) {
		t.Errorf("replica, token of a deleted key: %v, want ErrInvalidToken", err)
	}
}

// A Rotate that waited for the lock while another rotation committed has a
// transaction older than that rotation's key; it must retry rather than
// leave its own key sorted second.
func TestRotateOutraced(t *testing.T) {
	pool := pgtest.Pool(t)
	ctx := t.Context()
	s := newService(t, pool, Config{})
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	if _, err := holder.Exec(ctx, sqlLock, lockKey); err != nil {
		t.Fatal(err)
	}
	type result struct {
		kid string
		err error
	}
	done := make(chan result, 1)
	go func() {
		kid, err := s.Rotate(ctx)
		done <- result{kid, err}
	}()
	testutil.Eventually(t, "Rotate waiting for the lock", func() error {
		var waiting bool
		if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if !waiting {
			return errors.New("no advisory lock is awaited")
		}
		return nil
	})
	rival, err := insertKey(ctx, db.New(pool))
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("Rotate: %v", r.err)
	}
	if got, want := storedKIDs(t, pool), []string{r.kid, rival}; !slices.Equal(got, want) {
		t.Errorf("database holds %v, want %v", got, want)
	}
	if got := currentKID(s); got != r.kid {
		t.Errorf("signs with %q, want the rotated %q", got, r.kid)
	}
}

func TestJWKS(t *testing.T) {
	for _, rotations := range []int{0, 1, 3} {
		t.Run(fmt.Sprintf("%d rotations", rotations), func(t *testing.T) {
			pool := pgtest.Pool(t)
			s := newService(t, pool, Config{})
			for range rotations {
				if _, err := s.Rotate(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			want := storedKIDs(t, pool)
			if len(want) != min(rotations+1, 2) {
				t.Fatalf("database holds %v after %d rotations", want, rotations)
			}
			set, err := s.JWKS(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			b, err := json.Marshal(set)
			if err != nil {
				t.Fatal(err)
			}
			var wire struct{ Keys []map[string]any }
			if err := json.Unmarshal(b, &wire); err != nil {
				t.Fatal(err)
			}
			var kids []string
			for _, k := range wire.Keys {
				if _, ok := k["d"]; ok {
					t.Errorf("key %v publishes its private part", k["kid"])
				}
				if k["kty"] != "OKP" || k["crv"] != "Ed25519" || k["alg"] != "EdDSA" || k["use"] != "sig" {
					t.Errorf("key %v: kty %v crv %v alg %v use %v, want an OKP Ed25519 EdDSA signing key", k["kid"], k["kty"], k["crv"], k["alg"], k["use"])
				}
				kid, _ := k["kid"].(string)
				kids = append(kids, kid)
			}
			if !slices.Equal(kids, want) {
				t.Errorf("JWKS %v, want %v", kids, want)
			}

			// What is published is what verifies: a client with only the
			// JWKS can check a token.
			var parsed jose.JSONWebKeySet
			if err := json.Unmarshal(b, &parsed); err != nil {
				t.Fatal(err)
			}
			token := issue(t, s)
			jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.EdDSA})
			if err != nil {
				t.Fatal(err)
			}
			keys := parsed.Key(jws.Signatures[0].Header.KeyID)
			if len(keys) != 1 {
				t.Fatalf("%d published keys for the token's kid, want 1", len(keys))
			}
			if _, err := jws.Verify(keys[0]); err != nil {
				t.Errorf("verify with the published key: %v", err)
			}
		})
	}
}

func TestNewConcurrentlyCreatesOneKey(t *testing.T) {
	pool := pgtest.Pool(t)
	const n = 8
	services := make([]*Service, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			services[i], errs[i] = New(t.Context(), pool, Config{Issuer: testIssuer, Log: slog.New(slog.DiscardHandler)})
		})
	}
	wg.Wait()
	kids := storedKIDs(t, pool)
	if len(kids) != 1 {
		t.Fatalf("database holds %v, want one key", kids)
	}
	for i, s := range services {
		if errs[i] != nil {
			t.Errorf("New #%d: %v", i, errs[i])
			continue
		}
		if got := currentKID(s); got != kids[0] {
			t.Errorf("New #%d signs with %q, want %q", i, got, kids[0])
		}
	}
}

func TestVerifyAssertion(t *testing.T) {
	pool := pgtest.Pool(t)
	ensureJTITable(t, pool)
	s := newService(t, pool, Config{})
	endpoint := s.cfg.TokenEndpoint
	if endpoint != testIssuer+"/device/v1/token" {
		t.Fatalf("default token endpoint %q", endpoint)
	}
	device := uuid.New()
	pub, priv := newKey(t)
	_, otherPriv := newKey(t)

	sign := func(t *testing.T, mod func(*jwt.Claims)) string {
		t.Helper()
		now := time.Now()
		c := jwt.Claims{
			Issuer: device.String(), Subject: device.String(), Audience: jwt.Audience{endpoint},
			IssuedAt: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(now.Add(time.Minute)), ID: rand.Text(),
		}
		mod(&c)
		a, err := signClaims(priv, c)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	signAs := func(priv ed25519.PrivateKey, device uuid.UUID, aud string, ttl time.Duration) func(*testing.T) string {
		return func(t *testing.T) string {
			a, err := SignAssertion(priv, device, aud, ttl)
			if err != nil {
				t.Fatal(err)
			}
			return a
		}
	}
	with := func(mod func(*jwt.Claims)) func(*testing.T) string {
		return func(t *testing.T) string { return sign(t, mod) }
	}

	tests := []struct {
		name      string
		assertion func(t *testing.T) string
		valid     bool
	}{
		{"good", signAs(priv, device, endpoint, time.Minute), true},
		{"exp at the maximum lifetime", signAs(priv, device, endpoint, MaxAssertionLifetime), true},
		{"expired within the skew", with(func(c *jwt.Claims) { c.Expiry = jwt.NewNumericDate(time.Now().Add(-10 * time.Second)) }), true},
		{"aud among others", with(func(c *jwt.Claims) { c.Audience = jwt.Audience{"https://elsewhere.test", endpoint} }), true},
		{"no iat", with(func(c *jwt.Claims) { c.IssuedAt = nil }), true},
		{"jti of 200 characters", with(func(c *jwt.Claims) { c.ID = strings.Repeat("é", maxJTILength) }), true},
		{"wrong signer key", signAs(otherPriv, device, endpoint, time.Minute), false},
		{"another device", signAs(priv, uuid.New(), endpoint, time.Minute), false},
		{"iss differs from sub", with(func(c *jwt.Claims) { c.Subject = uuid.NewString() }), false},
		{"uppercase iss and sub", with(func(c *jwt.Claims) {
			c.Issuer = strings.ToUpper(device.String())
			c.Subject = c.Issuer
		}), false},
		{"wrong aud", signAs(priv, device, testIssuer, time.Minute), false},
		{"expired", with(func(c *jwt.Claims) {
			c.IssuedAt = jwt.NewNumericDate(time.Now().Add(-2 * time.Minute))
			c.Expiry = jwt.NewNumericDate(time.Now().Add(-time.Minute))
		}), false},
		{"exp too far ahead", signAs(priv, device, endpoint, 10*time.Minute), false},
		{"no exp", with(func(c *jwt.Claims) { c.Expiry = nil }), false},
		{"iat in the future", with(func(c *jwt.Claims) { c.IssuedAt = jwt.NewNumericDate(time.Now().Add(2 * time.Minute)) }), false},
		{"not yet valid", with(func(c *jwt.Claims) { c.NotBefore = jwt.NewNumericDate(time.Now().Add(2 * time.Minute)) }), false},
		{"missing jti", with(func(c *jwt.Claims) { c.ID = "" }), false},
		{"jti too long", with(func(c *jwt.Claims) { c.ID = strings.Repeat("a", maxJTILength+1) }), false},
		{"jti with NUL", with(func(c *jwt.Claims) { c.ID = "a\x00b" }), false},
		{"HS256 keyed with the public key", func(t *testing.T) string {
			return signToken(t, newSigner(t, jose.HS256, []byte(pub), ""), jwt.Claims{
				Issuer: device.String(), Subject: device.String(), Audience: jwt.Audience{endpoint},
				Expiry: jwt.NewNumericDate(time.Now().Add(time.Minute)), ID: rand.Text(),
			})
		}, false},
		{"not a JWT", func(*testing.T) string { return "not.a.jwt" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.VerifyAssertion(t.Context(), pool, tt.assertion(t), device, pub)
			switch {
			case tt.valid && err != nil:
				t.Fatalf("VerifyAssertion: %v", err)
			case !tt.valid && !errors.Is(err, ErrInvalidAssertion):
				t.Fatalf("VerifyAssertion: %v, want ErrInvalidAssertion", err)
			case !tt.valid && errors.Is(err, ErrReplayedAssertion):
				t.Fatalf("VerifyAssertion: %v, want a reason other than replay", err)
			case !tt.valid:
				t.Logf("refused: %v", err)
			}
		})
	}

	t.Run("replay", func(t *testing.T) {
		a := signAs(priv, device, endpoint, time.Minute)(t)
		if err := s.VerifyAssertion(t.Context(), pool, a, device, pub); err != nil {
			t.Fatalf("first use: %v", err)
		}
		err := s.VerifyAssertion(t.Context(), pool, a, device, pub)
		if !errors.Is(err, ErrReplayedAssertion) || !errors.Is(err, ErrInvalidAssertion) {
			t.Fatalf("second use: %v, want ErrReplayedAssertion wrapping ErrInvalidAssertion", err)
		}
		// A jti is one-time per device, not across devices.
		var c jwt.Claims
		tok, err := jwt.ParseSigned(a, []jose.SignatureAlgorithm{jose.EdDSA})
		if err != nil {
			t.Fatal(err)
		}
		if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil {
			t.Fatal(err)
		}
		otherDevice := uuid.New()
		otherPub, otherPriv := newKey(t)
		c.Issuer, c.Subject = otherDevice.String(), otherDevice.String()
		b, err := signClaims(otherPriv, c)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.VerifyAssertion(t.Context(), pool, b, otherDevice, otherPub); err != nil {
			t.Errorf("same jti from another device: %v", err)
		}
	})

	t.Run("in the caller's transaction", func(t *testing.T) {
		a := signAs(priv, device, endpoint, time.Minute)(t)
		tx, err := pool.Begin(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if err := s.VerifyAssertion(t.Context(), tx, a, device, pub); err != nil {
			t.Fatal(err)
		}
		// Rolled back with the caller's work, the jti was never used.
		if err := tx.Rollback(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := s.VerifyAssertion(t.Context(), pool, a, device, pub); err != nil {
			t.Fatalf("after rollback: %v", err)
		}
		if err := s.VerifyAssertion(t.Context(), pool, a, device, pub); !errors.Is(err, ErrReplayedAssertion) {
			t.Fatalf("after commit: %v, want ErrReplayedAssertion", err)
		}
	})

	t.Run("malformed registered key", func(t *testing.T) {
		a := signAs(priv, device, endpoint, time.Minute)(t)
		err := s.VerifyAssertion(t.Context(), pool, a, device, pub[:16])
		if err == nil || errors.Is(err, ErrInvalidAssertion) {
			t.Fatalf("VerifyAssertion: %v, want an error that is not the device's fault", err)
		}
	})
}

func TestAssertionSubject(t *testing.T) {
	device := uuid.New()
	_, priv := newKey(t)
	sign := func(iss string) string {
		a, err := signClaims(priv, jwt.Claims{Issuer: iss, Subject: iss})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	good, err := SignAssertion(priv, device, testIssuer+"/device/v1/token", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		assertion string
		want      uuid.UUID
	}{
		{"device assertion", good, device},
		{"iss not a uuid", sign("device-1"), uuid.Nil},
		{"uuid in braces", sign("{" + device.String() + "}"), uuid.Nil},
		{"unsigned", "eyJhbGciOiJub25lIn0." + base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"`+device.String()+`"}`)) + ".", uuid.Nil},
		{"not a JWT", "hello", uuid.Nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := AssertionSubject(tt.assertion)
			if tt.want == uuid.Nil {
				if !errors.Is(err, ErrInvalidAssertion) {
					t.Fatalf("AssertionSubject: %s, %v; want ErrInvalidAssertion", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("AssertionSubject: %s, %v; want %s", got, err, tt.want)
			}
		})
	}
}

// insertJTI stores a used jti that expires at exp.
func insertJTI(t *testing.T, pool *pgxpool.Pool, device uuid.UUID, jti string, exp time.Time) {
	t.Helper()
	if _, err := pool.Exec(t.Context(), sqlRecordJTI, device, jti, exp); err != nil {
		t.Fatal(err)
	}
}

func jtiStored(t *testing.T, pool *pgxpool.Pool, device uuid.UUID, jti string) bool {
	t.Helper()
	var ok bool
	err := pool.QueryRow(t.Context(), `SELECT EXISTS (SELECT 1 FROM device_assertion_jtis WHERE device_id = $1 AND jti = $2)`, device, jti).Scan(&ok)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestRun(t *testing.T) {
	pool := pgtest.Pool(t)
	ensureJTITable(t, pool)
	s := newService(t, pool, Config{RotateEvery: time.Nanosecond})
	kid0 := currentKID(s)
	device := uuid.New()
	insertJTI(t, pool, device, "expired", time.Now().Add(-time.Hour))
	insertJTI(t, pool, device, "live", time.Now().Add(time.Hour))

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	testutil.Eventually(t, "Run to rotate and forget the expired jti", func() error {
		kids := storedKIDs(t, pool)
		if kids[0] == kid0 || currentKID(s) != kids[0] || jtiStored(t, pool, device, "expired") {
			return fmt.Errorf("database holds %v, service signs with %s", kids, currentKID(s))
		}
		return nil
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !jtiStored(t, pool, device, "live") {
		t.Error("Run deleted a jti that has not expired")
	}
}

func TestMaintain(t *testing.T) {
	tests := []struct {
		name        string
		rotateEvery time.Duration
		// locked holds the lock in another session, as a replica running
		// its own check would.
		locked     bool
		wantRotate bool
		wantPurge  bool
	}{
		{"key due", time.Nanosecond, false, true, true},
		{"key fresh", time.Hour, false, false, true},
		{"another replica holds the lock", time.Nanosecond, true, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := pgtest.Pool(t)
			ensureJTITable(t, pool)
			s := newService(t, pool, Config{RotateEvery: tt.rotateEvery})
			device := uuid.New()
			// Past exp, but within the retention that covers the skew: kept.
			insertJTI(t, pool, device, "recent", time.Now().Add(-clockSkew/2))
			insertJTI(t, pool, device, "expired", time.Now().Add(-time.Hour))
			before := storedKIDs(t, pool)
			if tt.locked {
				tx, err := pool.Begin(t.Context())
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback(context.WithoutCancel(t.Context())) //nolint:errcheck
				if _, err := tx.Exec(t.Context(), sqlLock, lockKey); err != nil {
					t.Fatal(err)
				}
			}
			kid, err := s.maintainLocked(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			after := storedKIDs(t, pool)
			if tt.wantRotate {
				if want := []string{kid, before[0]}; kid == "" || !slices.Equal(after, want) {
					t.Errorf("rotated to %q: database holds %v, want %v", kid, after, want)
				}
			} else if kid != "" || !slices.Equal(after, before) {
				t.Errorf("rotated to %q: database holds %v, want %v unchanged", kid, after, before)
			}
			if got := !jtiStored(t, pool, device, "expired"); got != tt.wantPurge {
				t.Errorf("expired jti deleted: %v, want %v", got, tt.wantPurge)
			}
			if !jtiStored(t, pool, device, "recent") {
				t.Error("deleted a jti still within the clock skew of its exp")
			}
		})
	}
}

func BenchmarkIssue(b *testing.B) {
	s := newService(b, pgtest.Pool(b), Config{})
	device, org, fleet := uuid.New(), uuid.New(), uuid.New()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := s.Issue(b.Context(), device, org, fleet); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	s := newService(b, pgtest.Pool(b), Config{})
	token := issue(b, s)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Verify(b.Context(), token); err != nil {
			b.Fatal(err)
		}
	}
}
