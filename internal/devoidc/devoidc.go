// Package devoidc is the OpenID Connect provider of dev mode: it publishes
// discovery, keys and userinfo for tokens it mints itself, so the API's real
// token verifier runs unchanged without an external identity provider. It
// never authenticates anyone: whoever can mint has the database.
//
// Keys live in the signing_keys table, so the dev server and the
// `flock-api dev-token` command, separate processes on one database, sign
// and verify with the same keys.
package devoidc

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/zitadel/oidc/v3/pkg/crypto"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/flock-io/flock-api/gen/db"
)

// Purpose marks this provider's rows in signing_keys.
const Purpose = "dev-oidc"

const (
	algorithm = jose.RS256
	rsaBits   = 2048
	// initialKID is fixed so that two processes creating the first key at
	// the same time collide on the primary key instead of publishing two.
	initialKID = "dev-oidc-1"
)

// Provider mints and publishes dev tokens. It is safe for concurrent use.
type Provider struct {
	q        *db.Queries
	issuer   string
	audience string

	mu sync.Mutex
	// seen holds every key this Provider has loaded or created, so a test can
	// still sign with a key after it was removed from the database. It is
	// never written anywhere.
	seen map[string]privateKey
}

type privateKey struct {
	kid string
	der []byte
	key *rsa.PrivateKey
}

// New loads the keys of pool, creating the first one if there is none.
func New(ctx context.Context, pool *pgxpool.Pool, issuer, audience string) (*Provider, error) {
	if issuer == "" || audience == "" {
		return nil, errors.New("devoidc: issuer and audience are required")
	}
	p := &Provider{q: db.New(pool), issuer: issuer, audience: audience, seen: map[string]privateKey{}}
	keys, err := p.load(ctx)
	if err != nil {
		return nil, err
	}
	if len(keys) > 0 {
		return p, nil
	}
	if _, err := p.create(ctx, initialKID); err != nil {
		if !postgres.IsUniqueViolation(err) {
			return nil, err
		}
		// Another process created it between our read and our insert.
	}
	if keys, err = p.load(ctx); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, errors.New("devoidc: no signing key after creating one")
	}
	return p, nil
}

// Handler serves discovery, keys and userinfo at paths relative to the
// issuer; mount it with http.StripPrefix of the issuer's URL path.
func (p *Provider) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", p.serveDiscovery)
	mux.HandleFunc("GET /keys", func(w http.ResponseWriter, r *http.Request) {
		op.Keys(w, r, publishedKeys{p})
	})
	mux.HandleFunc("GET /userinfo", p.serveUserinfo)
	return mux
}

func (p *Provider) serveDiscovery(w http.ResponseWriter, _ *http.Request) {
	op.Discover(w, &oidc.DiscoveryConfiguration{
		Issuer:                           p.issuer,
		JwksURI:                          p.issuer + "/keys",
		UserinfoEndpoint:                 p.issuer + "/userinfo",
		IDTokenSigningAlgValuesSupported: []string{string(algorithm)},
		ResponseTypesSupported:           []string{string(oidc.ResponseTypeCode)},
		SubjectTypesSupported:            []string{"public"},
		// Tokens come from dev-token, not from a grant; the field is
		// omitempty, so it is left out rather than sent empty.
		GrantTypesSupported: []oidc.GrantType{},
	})
}

type userinfoResponse struct {
	Subject       string `json:"sub"`
	Email         string `json:"email"`
	EmailVerified bool   `json:"email_verified"`
	Name          string `json:"name"`
}

func (p *Provider) serveUserinfo(w http.ResponseWriter, r *http.Request) {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, oidc.BearerToken) || strings.TrimSpace(token) == "" {
		unauthorized(w, r, errors.New("no bearer token"))
		return
	}
	v := op.NewAccessTokenVerifier(p.issuer, publishedKeys{p}, op.WithSupportedAccessTokenSigningAlgorithms(string(algorithm)))
	claims, err := op.VerifyAccessToken[*oidc.AccessTokenClaims](r.Context(), strings.TrimSpace(token), v)
	if err != nil {
		unauthorized(w, r, err)
		return
	}
	email, _ := claims.Claims["email"].(string)
	name, _ := claims.Claims["name"].(string)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, userinfoResponse{Subject: claims.Subject, Email: email, EmailVerified: true, Name: name})
}

func unauthorized(w http.ResponseWriter, r *http.Request, reason error) {
	slog.DebugContext(r.Context(), "dev oidc userinfo refused a token", "error", reason.Error())
	w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
	http.Error(w, "invalid token", http.StatusUnauthorized)
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// Mint returns an access token for email, signed by the newest key. Keys are
// read from the database each time, so a rotation by another process is
// seen. An empty name defaults to the part of email before the @.
func (p *Provider) Mint(ctx context.Context, email, name string, ttl time.Duration) (string, error) {
	keys, err := p.load(ctx)
	if err != nil {
		return "", err
	}
	if len(keys) == 0 {
		return "", errors.New("devoidc: mint: no signing key (all were removed)")
	}
	return p.mint(keys[0], email, name, ttl)
}

// MintWithKey is Mint signed by the key kid, which must be in the database or
// among the keys this Provider has seen, even if since removed.
func (p *Provider) MintWithKey(ctx context.Context, kid, email, name string, ttl time.Duration) (string, error) {
	if _, err := p.load(ctx); err != nil {
		return "", err
	}
	p.mu.Lock()
	k, ok := p.seen[kid]
	p.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("devoidc: mint: unknown key %q", kid)
	}
	return p.mint(k, email, name, ttl)
}

func (p *Provider) mint(k privateKey, email, name string, ttl time.Duration) (string, error) {
	email = strings.ToLower(strings.TrimSpace(email))
	local, _, ok := strings.Cut(email, "@")
	if !ok || local == "" {
		return "", fmt.Errorf("devoidc: mint: %q is not an email address", email)
	}
	if name == "" {
		name = local
	}
	jti, err := randomHex(16)
	if err != nil {
		return "", err
	}
	now := time.Now()
	claims := oidc.NewAccessTokenClaims(p.issuer, Subject(email), []string{p.audience}, now.Add(ttl), jti, "", 0)
	claims.Claims = map[string]any{"email": email, "name": name, "email_verified": true}
	signer, err := op.SignerFromKey(signingKey(k))
	if err != nil {
		return "", fmt.Errorf("devoidc: signer for key %s: %w", k.kid, err)
	}
	token, err := crypto.Sign(claims, signer)
	if err != nil {
		return "", fmt.Errorf("devoidc: sign token: %w", err)
	}
	return token, nil
}

// Subject is the stable sub of email: a hash, so it looks as opaque as a real
// issuer's and does not change when the same person mints again.
func Subject(email string) string {
	sum := sha256.Sum256([]byte(strings.ToLower(strings.TrimSpace(email))))
	return "dev-" + hex.EncodeToString(sum[:16])
}

// Rotate creates a new key that signs from now on; older keys stay published
// so tokens they signed keep verifying until they are removed.
func (p *Provider) Rotate(ctx context.Context) (string, error) {
	suffix, err := randomHex(8)
	if err != nil {
		return "", err
	}
	return p.create(ctx, "dev-oidc-"+suffix)
}

// Remove unpublishes the key kid; tokens it signed stop verifying once
// verifiers fetch the key set again.
func (p *Provider) Remove(ctx context.Context, kid string) error {
	n, err := p.q.SigningKeyDelete(ctx, db.SigningKeyDeleteParams{Purpose: Purpose, Kid: kid})
	if err != nil {
		return fmt.Errorf("devoidc: remove key %s: %w", kid, err)
	}
	if n == 0 {
		return fmt.Errorf("devoidc: remove key %s: no such key", kid)
	}
	return nil
}

func (p *Provider) create(ctx context.Context, kid string) (string, error) {
	key, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return "", fmt.Errorf("devoidc: generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", fmt.Errorf("devoidc: encode key: %w", err)
	}
	if err := p.q.SigningKeyInsert(ctx, db.SigningKeyInsertParams{
		Kid: kid, Purpose: Purpose, Algorithm: string(algorithm), PrivateKey: der,
	}); err != nil {
		return "", fmt.Errorf("devoidc: store key %s: %w", kid, err)
	}
	p.remember(privateKey{kid: kid, der: der, key: key})
	return kid, nil
}

// load returns the stored keys, newest (the signing key) first, and
// remembers them for MintWithKey.
func (p *Provider) load(ctx context.Context) ([]privateKey, error) {
	rows, err := p.q.SigningKeyList(ctx, Purpose)
	if err != nil {
		return nil, fmt.Errorf("devoidc: load keys: %w", err)
	}
	keys := make([]privateKey, 0, len(rows))
	for _, row := range rows {
		k, err := p.parse(row)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func (p *Provider) parse(row db.SigningKey) (privateKey, error) {
	p.mu.Lock()
	cached, ok := p.seen[row.Kid]
	p.mu.Unlock()
	// The initial kid comes back with new material if every key was removed
	// and New ran again, so the bytes, not the kid, decide.
	if ok && bytes.Equal(cached.der, row.PrivateKey) {
		return cached, nil
	}
	if row.Algorithm != string(algorithm) {
		return privateKey{}, fmt.Errorf("devoidc: key %s: algorithm %q, want %s", row.Kid, row.Algorithm, algorithm)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(row.PrivateKey)
	if err != nil {
		return privateKey{}, fmt.Errorf("devoidc: key %s: %w", row.Kid, err)
	}
	rk, ok := parsed.(*rsa.PrivateKey)
	if !ok {
		return privateKey{}, fmt.Errorf("devoidc: key %s: %T is not an RSA key", row.Kid, parsed)
	}
	k := privateKey{kid: row.Kid, der: row.PrivateKey, key: rk}
	p.remember(k)
	return k, nil
}

func (p *Provider) remember(k privateKey) {
	p.mu.Lock()
	p.seen[k.kid] = k
	p.mu.Unlock()
}

// publishedKeys serves the stored keys: as op.KeyProvider to /keys, and as
// oidc.KeySet to the userinfo check. Removed keys are not among them even if
// the Provider still remembers them.
type publishedKeys struct{ p *Provider }

func (k publishedKeys) KeySet(ctx context.Context) ([]op.Key, error) {
	keys, err := k.p.load(ctx)
	if err != nil {
		slog.ErrorContext(ctx, "dev oidc key set", "error", err.Error())
		return nil, err
	}
	out := make([]op.Key, len(keys))
	for i, key := range keys {
		out[i] = publicKey(key)
	}
	return out, nil
}

func (k publishedKeys) VerifySignature(ctx context.Context, jws *jose.JSONWebSignature) ([]byte, error) {
	keys, err := k.p.load(ctx)
	if err != nil {
		return nil, err
	}
	jwks := make([]jose.JSONWebKey, len(keys))
	for i, key := range keys {
		jwks[i] = jose.JSONWebKey{KeyID: key.kid, Algorithm: string(algorithm), Use: oidc.KeyUseSignature, Key: &key.key.PublicKey}
	}
	kid, alg := oidc.GetKeyIDAndAlg(jws)
	key, err := oidc.FindMatchingKey(kid, oidc.KeyUseSignature, alg, jwks...)
	if err != nil {
		return nil, fmt.Errorf("key %q: %w", kid, err)
	}
	return jws.Verify(&key)
}

// publicKey is a stored key as op.Key, for publishing.
type publicKey privateKey

func (k publicKey) ID() string                         { return k.kid }
func (k publicKey) Algorithm() jose.SignatureAlgorithm { return algorithm }
func (k publicKey) Use() string                        { return oidc.KeyUseSignature }
func (k publicKey) Key() any                           { return &k.key.PublicKey }

// signingKey is a stored key as op.SigningKey, for signing.
type signingKey privateKey

func (k signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return algorithm }
func (k signingKey) Key() any                                    { return k.key }
func (k signingKey) ID() string                                  { return k.kid }

// Transport answers requests by calling h in-process. The dev server hands
// it to the verifier so the issuer, named by the public URL, need not be
// reachable from the server itself (behind a proxy, or before it listens).
func Transport(h http.Handler) http.RoundTripper {
	return handlerTransport{h: h}
}

type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(req *http.Request) (resp *http.Response, err error) {
	if req.Body != nil {
		defer req.Body.Close()
	}
	in := req.Clone(req.Context())
	in.RequestURI = req.URL.RequestURI()
	in.RemoteAddr = "devoidc.Transport"
	if in.Host == "" {
		in.Host = req.URL.Host
	}
	if in.Body == nil {
		in.Body = http.NoBody
	}
	rec := &recorder{header: http.Header{}}
	defer func() {
		// A panicking handler must fail this request, not the caller's
		// goroutine, as it would behind a real server.
		if v := recover(); v != nil {
			resp, err = nil, fmt.Errorf("devoidc: handler for %s panicked: %v", req.URL.Path, v)
		}
	}()
	t.h.ServeHTTP(rec, in)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	return &http.Response{
		Status:        fmt.Sprintf("%d %s", rec.status, http.StatusText(rec.status)),
		StatusCode:    rec.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        rec.header,
		Body:          io.NopCloser(bytes.NewReader(rec.body.Bytes())),
		ContentLength: int64(rec.body.Len()),
		Request:       req,
	}, nil
}

// recorder is the smallest http.ResponseWriter that Transport needs;
// net/http/httptest is for tests.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(b)
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("devoidc: random: %w", err)
	}
	return hex.EncodeToString(b), nil
}
