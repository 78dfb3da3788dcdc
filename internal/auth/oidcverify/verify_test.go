package oidcverify_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/zitadel/oidc/v3/pkg/crypto"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/flock-io/flock-api/internal/auth/oidcverify"
	"github.com/flock-io/flock-api/internal/devoidc"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

const audience = "flock-test"

// issuer is a devoidc.Provider served over HTTP under /dev/oidc, counting
// the requests each path gets.
type issuer struct {
	*devoidc.Provider
	url  string
	srv  *httptest.Server
	hits sync.Map // path -> *atomic.Int64
}

func newIssuer(t testing.TB, pool *pgxpool.Pool) *issuer {
	t.Helper()
	iss := &issuer{}
	mux := http.NewServeMux()
	iss.srv = httptest.NewServer(mux)
	t.Cleanup(iss.srv.Close)
	iss.url = iss.srv.URL + "/dev/oidc"
	p, err := devoidc.New(context.Background(), pool, iss.url, audience)
	if err != nil {
		t.Fatal(err)
	}
	iss.Provider = p
	h := http.StripPrefix("/dev/oidc", p.Handler())
	mux.Handle("/dev/oidc/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := iss.hits.LoadOrStore(strings.TrimPrefix(r.URL.Path, "/dev/oidc"), new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
		h.ServeHTTP(w, r)
	}))
	return iss
}

func (iss *issuer) count(path string) int64 {
	n, ok := iss.hits.Load(path)
	if !ok {
		return 0
	}
	return n.(*atomic.Int64).Load()
}

func (iss *issuer) verifier(t testing.TB, cfg oidcverify.Config) *oidcverify.Verifier {
	t.Helper()
	cfg.Issuer, cfg.Audience = iss.url, audience
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = iss.srv.Client()
	}
	v, err := oidcverify.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mint(t testing.TB, p *devoidc.Provider, email, name string, ttl time.Duration) string {
	t.Helper()
	tok, err := p.Mint(context.Background(), email, name, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func kidOf(t testing.TB, token string) string {
	t.Helper()
	jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	return jws.Signatures[0].Header.KeyID
}

// rsaKey signs tokens in tests; as op.SigningKey it is what
// op.SignerFromKey needs.
type rsaKey struct {
	kid string
	key *rsa.PrivateKey
}

func (k rsaKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k rsaKey) Key() any                                    { return k.key }
func (k rsaKey) ID() string                                  { return k.kid }

// publishedKey is an rsaKey as op.Key, for op.Keys.
type publishedKey rsaKey

func (k publishedKey) ID() string                         { return k.kid }
func (k publishedKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k publishedKey) Use() string                        { return oidc.KeyUseSignature }
func (k publishedKey) Key() any                           { return &k.key.PublicKey }

func newRSAKey(t testing.TB, kid string) rsaKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return rsaKey{kid: kid, key: k}
}

func sign(t testing.TB, k op.SigningKey, c *oidc.AccessTokenClaims) string {
	t.Helper()
	signer, err := op.SignerFromKey(k)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := crypto.Sign(c, signer)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func claimsFor(iss, sub string) *oidc.AccessTokenClaims {
	c := oidc.NewAccessTokenClaims(iss, sub, []string{audience}, time.Now().Add(time.Hour), "jti", "", 0)
	c.Claims = map[string]any{"email": "eve@example.com"}
	return c
}

func TestNewValidatesConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  oidcverify.Config
	}{
		{"no issuer", oidcverify.Config{Audience: audience}},
		{"relative issuer", oidcverify.Config{Issuer: "id.example.com", Audience: audience}},
		{"other scheme", oidcverify.Config{Issuer: "ftp://id.example.com", Audience: audience}},
		{"no audience", oidcverify.Config{Issuer: "https://id.example.com"}},
		{"negative max age", oidcverify.Config{Issuer: "https://id.example.com", Audience: audience, KeyCacheMaxAge: -time.Second}},
		{"negative skew", oidcverify.Config{Issuer: "https://id.example.com", Audience: audience, ClockSkew: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := oidcverify.New(tt.cfg); err == nil {
				t.Error("New accepted it")
			}
		})
	}
	if _, err := oidcverify.New(oidcverify.Config{Issuer: "https://id.example.com", Audience: audience}); err != nil {
		t.Errorf("minimal config: %v", err)
	}
}

func TestVerifyValidToken(t *testing.T) {
	iss := newIssuer(t, pgtest.Pool(t))
	v := iss.verifier(t, oidcverify.Config{})
	if err := v.Ready(context.Background()); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	before := time.Now()
	c, err := v.Verify(context.Background(), mint(t, iss.Provider, "ada@example.com", "Ada Lovelace", time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := oidcverify.Claims{Issuer: iss.url, Subject: devoidc.Subject("ada@example.com"), Email: "ada@example.com",
		Name: "Ada Lovelace", EmailVerified: true}
	expiry := c.Expiry
	c.Expiry = time.Time{}
	if *c != want {
		t.Errorf("claims %+v, want %+v", *c, want)
	}
	if d := expiry.Sub(before); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("expiry %v is not an hour after minting", expiry)
	}
	if n := iss.count("/userinfo"); n != 0 {
		t.Errorf("userinfo called %d times for a token that carries an email", n)
	}
}

func TestVerifyRefuses(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)
	iss := newIssuer(t, pool)
	v := iss.verifier(t, oidcverify.Config{})
	valid := mint(t, iss.Provider, "ada@example.com", "", time.Hour)

	// Both share iss's database, hence its keys: their tokens are signed
	// correctly and fail only on the claim under test.
	otherIssuer, err := devoidc.New(ctx, pool, iss.srv.URL+"/another", audience)
	if err != nil {
		t.Fatal(err)
	}
	otherAudience, err := devoidc.New(ctx, pool, iss.url, "someone-else")
	if err != nil {
		t.Fatal(err)
	}

	parts := strings.Split(valid, ".")
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		t.Fatal(err)
	}
	sig[len(sig)/2] ^= 0xff
	forged := parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig)

	rogue := newRSAKey(t, "rogue")
	impostor := rsaKey{kid: kidOf(t, valid), key: rogue.key}
	sub := devoidc.Subject("eve@example.com")
	notYet := claimsFor(iss.url, sub)
	notYet.NotBefore = oidc.FromTime(time.Now().Add(time.Hour))
	future := claimsFor(iss.url, sub)
	future.IssuedAt = oidc.FromTime(time.Now().Add(time.Hour))
	noSubject := claimsFor(iss.url, "")

	hmac, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: []byte("0123456789abcdef0123456789abcdef")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	hs256, err := crypto.Sign(claimsFor(iss.url, sub), hmac)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		token  string
		reason string
	}{
		{"expired beyond the skew", mint(t, iss.Provider, "ada@example.com", "", -2*time.Minute), "expired"},
		{"wrong issuer", mint(t, otherIssuer, "ada@example.com", "", time.Hour), "wrong issuer"},
		{"wrong audience", mint(t, otherAudience, "ada@example.com", "", time.Hour), "wrong audience"},
		{"signature altered", forged, "bad signature"},
		{"payload altered", parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"`+iss.url+`","aud":["`+audience+`"],"sub":"x","exp":9999999999,"email":"eve@example.com"}`)) + "." + parts[2], "bad signature"},
		{"unpublished key", sign(t, rogue, claimsFor(iss.url, sub)), "unknown key"},
		{"unpublished key under a published kid", sign(t, impostor, claimsFor(iss.url, sub)), "bad signature"},
		{"HMAC", hs256, "unsupported signature algorithm"},
		{"not yet valid", sign(t, rogue, notYet), "not valid before"},
		{"issued in the future", sign(t, rogue, future), "issued in the future"},
		{"no subject", sign(t, rogue, noSubject), "no subject"},
		{"empty", "", "malformed"},
		{"not a JWT", "not-a-jwt", "malformed"},
		{"bad base64", "a.b!.c", "malformed"},
		{"payload not JSON", "eyJhbGciOiJSUzI1NiJ9." + base64.RawURLEncoding.EncodeToString([]byte("[1,2")) + ".c2ln", "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := v.Verify(ctx, tt.token)
			if !errors.Is(err, oidcverify.ErrInvalidToken) {
				t.Fatalf("Verify = %+v, %v; want ErrInvalidToken", c, err)
			}
			if !strings.Contains(err.Error(), tt.reason) {
				t.Errorf("error %q does not name the reason %q", err, tt.reason)
			}
		})
	}

	// Within the skew an expired token still passes: clocks disagree.
	if _, err := v.Verify(ctx, mint(t, iss.Provider, "ada@example.com", "", -10*time.Second)); err != nil {
		t.Errorf("token expired 10s ago, within the 30s skew: %v", err)
	}
}

func TestKeyRotation(t *testing.T) {
	ctx := context.Background()
	iss := newIssuer(t, pgtest.Pool(t))
	// cached keeps keys for the default 10 minutes; fresh for 1ms.
	cached := iss.verifier(t, oidcverify.Config{})
	fresh := iss.verifier(t, oidcverify.Config{KeyCacheMaxAge: time.Millisecond})

	oldTok := mint(t, iss.Provider, "ada@example.com", "", time.Hour)
	oldKID := kidOf(t, oldTok)
	for _, v := range []*oidcverify.Verifier{cached, fresh} {
		if _, err := v.Verify(ctx, oldTok); err != nil {
			t.Fatalf("before rotation: %v", err)
		}
	}

	newKID, err := iss.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	newTok := mint(t, iss.Provider, "ada@example.com", "", time.Hour)
	if got := kidOf(t, newTok); got != newKID {
		t.Fatalf("Mint after Rotate signed with %s, want %s", got, newKID)
	}
	fetches := iss.count("/keys")
	if _, err := cached.Verify(ctx, newTok); err != nil {
		t.Fatalf("token of the rotated-in key: %v", err)
	}
	if iss.count("/keys") <= fetches {
		t.Error("the verifier accepted an unknown key id without fetching the key set")
	}
	if _, err := cached.Verify(ctx, oldTok); err != nil {
		t.Errorf("token of the rotated-out key, still published: %v", err)
	}

	if err := iss.Remove(ctx, oldKID); err != nil {
		t.Fatal(err)
	}
	stale, err := iss.MintWithKey(ctx, oldKID, "ada@example.com", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Keys fetched before the removal are trusted until they age out: that
	// is the price of not fetching per request.
	if _, err := cached.Verify(ctx, stale); err != nil {
		t.Errorf("cached verifier, removed key, within max age: %v", err)
	}

	// Let fresh's 1ms pass; whatever the clock does, it has once this loop ends.
	for start := time.Now(); time.Since(start) <= 2*time.Millisecond; {
		time.Sleep(time.Millisecond)
	}
	if _, err := fresh.Verify(ctx, stale); !errors.Is(err, oidcverify.ErrInvalidToken) || !strings.Contains(err.Error(), "unknown key") {
		t.Errorf("token of a removed key after max age: %v, want unknown key", err)
	}
	if _, err := fresh.Verify(ctx, newTok); err != nil {
		t.Errorf("token of the current key: %v", err)
	}
}

// bareIssuer is a minimal op-based issuer whose tokens carry no email, as
// Zitadel's do unless the project asserts profile claims; its userinfo
// endpoint answers as userinfo says.
type bareIssuer struct {
	url      string
	key      rsaKey
	calls    atomic.Int64
	userinfo func(w http.ResponseWriter, sub string)
	noUI     bool
}

func newBareIssuer(t *testing.T) *bareIssuer {
	t.Helper()
	b := &bareIssuer{key: newRSAKey(t, "bare-1")}
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	b.url = srv.URL
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		doc := &oidc.DiscoveryConfiguration{Issuer: b.url, JwksURI: b.url + "/keys",
			IDTokenSigningAlgValuesSupported: []string{"RS256"}}
		if !b.noUI {
			doc.UserinfoEndpoint = b.url + "/userinfo"
		}
		op.Discover(w, doc)
	})
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) { op.Keys(w, r, b) })
	mux.HandleFunc("GET /userinfo", func(w http.ResponseWriter, r *http.Request) {
		b.calls.Add(1)
		v := op.NewAccessTokenVerifier(b.url, staticKeys{b.key})
		c, err := op.VerifyAccessToken[*oidc.AccessTokenClaims](r.Context(), strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "), v)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		b.userinfo(w, c.Subject)
	})
	return b
}

func (b *bareIssuer) KeySet(context.Context) ([]op.Key, error) {
	return []op.Key{publishedKey(b.key)}, nil
}

func (b *bareIssuer) mint(t *testing.T, sub string) string {
	t.Helper()
	return sign(t, b.key, oidc.NewAccessTokenClaims(b.url, sub, []string{audience}, time.Now().Add(time.Hour), "jti", "", 0))
}

// staticKeys verifies signatures with one known key.
type staticKeys struct{ k rsaKey }

func (s staticKeys) VerifySignature(_ context.Context, jws *jose.JSONWebSignature) ([]byte, error) {
	return jws.Verify(&s.k.key.PublicKey)
}

func TestUserinfoFallback(t *testing.T) {
	profile := func(body string) func(http.ResponseWriter, string) {
		return func(w http.ResponseWriter, sub string) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(strings.ReplaceAll(body, "SUB", sub)))
		}
	}
	tests := []struct {
		name     string
		userinfo func(http.ResponseWriter, string)
		noUI     bool
		want     *oidcverify.Claims
		reason   string // of an ErrInvalidToken
		down     bool   // ErrUnavailable rather than ErrInvalidToken
	}{
		{
			name:     "email from userinfo",
			userinfo: profile(`{"sub":"SUB","email":"bob@example.com","email_verified":true,"name":"Bob"}`),
			want:     &oidcverify.Claims{Subject: "bob-1", Email: "bob@example.com", EmailVerified: true, Name: "Bob"},
		},
		{
			name:     "unverified email as a string, as Cognito sends it",
			userinfo: profile(`{"sub":"SUB","email":"bob@example.com","email_verified":"false"}`),
			want:     &oidcverify.Claims{Subject: "bob-1", Email: "bob@example.com"},
		},
		{
			name:     "userinfo has no email either",
			userinfo: profile(`{"sub":"SUB","name":"Bob"}`),
			reason:   "token carries no email",
		},
		{
			name:     "userinfo answers for someone else",
			userinfo: profile(`{"sub":"mallory","email":"mallory@example.com"}`),
			reason:   "does not match",
		},
		{
			name:     "userinfo refuses the token",
			userinfo: func(w http.ResponseWriter, _ string) { w.WriteHeader(http.StatusUnauthorized) },
			reason:   "userinfo refused",
		},
		{
			name:     "userinfo fails",
			userinfo: func(w http.ResponseWriter, _ string) { w.WriteHeader(http.StatusBadGateway) },
			down:     true,
		},
		{
			name:   "no userinfo endpoint",
			noUI:   true,
			reason: "token carries no email",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBareIssuer(t)
			b.userinfo, b.noUI = tt.userinfo, tt.noUI
			v, err := oidcverify.New(oidcverify.Config{Issuer: b.url, Audience: audience})
			if err != nil {
				t.Fatal(err)
			}
			c, err := v.Verify(context.Background(), b.mint(t, "bob-1"))
			wantCalls := int64(1)
			if tt.noUI {
				wantCalls = 0
			}
			if n := b.calls.Load(); n != wantCalls {
				t.Errorf("userinfo called %d times, want %d", n, wantCalls)
			}
			switch {
			case tt.want != nil:
				if err != nil {
					t.Fatal(err)
				}
				tt.want.Issuer, tt.want.Expiry = b.url, c.Expiry
				if *c != *tt.want {
					t.Errorf("claims %+v, want %+v", *c, *tt.want)
				}
			case tt.down:
				if !errors.Is(err, oidcverify.ErrUnavailable) || errors.Is(err, oidcverify.ErrInvalidToken) {
					t.Errorf("Verify: %v, want ErrUnavailable only", err)
				}
			default:
				if !errors.Is(err, oidcverify.ErrInvalidToken) || !strings.Contains(err.Error(), tt.reason) {
					t.Errorf("Verify: %v, want ErrInvalidToken naming %q", err, tt.reason)
				}
			}
		})
	}
}

func TestTransportReachesAnUnreachableIssuer(t *testing.T) {
	ctx := context.Background()
	// Nothing listens on port 1, so only devoidc.Transport can answer.
	const url = "http://127.0.0.1:1/dev/oidc"
	p, err := devoidc.New(ctx, pgtest.Pool(t), url, audience)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/dev/oidc/", http.StripPrefix("/dev/oidc", p.Handler()))
	v, err := oidcverify.New(oidcverify.Config{Issuer: url, Audience: audience,
		HTTPClient: &http.Client{Transport: devoidc.Transport(mux)}})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	c, err := v.Verify(ctx, mint(t, p, "linus@example.com", "", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if c.Email != "linus@example.com" || c.Name != "linus" {
		t.Errorf("claims %+v", *c)
	}

	direct, err := oidcverify.New(oidcverify.Config{Issuer: url, Audience: audience})
	if err != nil {
		t.Fatal(err)
	}
	if err := direct.Ready(ctx); !errors.Is(err, oidcverify.ErrUnavailable) {
		t.Errorf("Ready without the transport: %v, want ErrUnavailable", err)
	}
}

func TestDiscoveryIsRetriedAfterAFailure(t *testing.T) {
	ctx := context.Background()
	iss := newIssuer(t, pgtest.Pool(t))
	var up atomic.Bool
	flaky := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		if !up.Load() {
			return nil, errors.New("connection refused")
		}
		return http.DefaultTransport.RoundTrip(r)
	})}
	v := iss.verifier(t, oidcverify.Config{HTTPClient: flaky})
	tok := mint(t, iss.Provider, "ada@example.com", "", time.Hour)

	if err := v.Ready(ctx); !errors.Is(err, oidcverify.ErrUnavailable) {
		t.Fatalf("Ready while down: %v, want ErrUnavailable", err)
	}
	if _, err := v.Verify(ctx, tok); !errors.Is(err, oidcverify.ErrUnavailable) || errors.Is(err, oidcverify.ErrInvalidToken) {
		t.Fatalf("Verify while down: %v, want ErrUnavailable and not ErrInvalidToken", err)
	}
	up.Store(true)
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("Verify once up: %v", err)
	}
	discoveries := iss.count("/.well-known/openid-configuration")
	if err := v.Ready(ctx); err != nil {
		t.Fatalf("Ready once up: %v", err)
	}
	if n := iss.count("/.well-known/openid-configuration"); n != discoveries {
		t.Errorf("discovery fetched again after it succeeded (%d then %d)", discoveries, n)
	}

	// With the issuer gone again, cached keys still verify.
	up.Store(false)
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Errorf("Verify with cached keys while the issuer is down: %v", err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestConcurrentVerify is for the race detector: many requests share one
// verifier while its key set keeps aging out and being replaced.
func TestConcurrentVerify(t *testing.T) {
	iss := newIssuer(t, pgtest.Pool(t))
	v := iss.verifier(t, oidcverify.Config{KeyCacheMaxAge: time.Millisecond})
	tok := mint(t, iss.Provider, "ada@example.com", "", time.Hour)
	var wg sync.WaitGroup
	errs := make(chan error, 16*5)
	for range 16 {
		wg.Go(func() {
			for range 5 {
				if _, err := v.Verify(context.Background(), tok); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func BenchmarkVerify(b *testing.B) {
	iss := newIssuer(b, pgtest.Pool(b))
	v := iss.verifier(b, oidcverify.Config{})
	tok := mint(b, iss.Provider, "ada@example.com", "Ada", time.Hour)
	ctx := context.Background()
	if _, err := v.Verify(ctx, tok); err != nil { // discovery and keys, once
		b.Fatal(err)
	}
	fetches := iss.count("/keys")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
	if n := iss.count("/keys"); n != fetches {
		b.Errorf("keys fetched %d times during the benchmark, want none", n-fetches)
	}
}
