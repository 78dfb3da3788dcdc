package devoidc_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/internal/devoidc"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

const audience = "flock-test"

// serve mounts p under /dev/oidc of a test server, as the dev server does.
func serve(t *testing.T, pool *pgxpool.Pool) (*devoidc.Provider, *httptest.Server, string) {
	t.Helper()
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	issuer := srv.URL + "/dev/oidc"
	p, err := devoidc.New(context.Background(), pool, issuer, audience)
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/dev/oidc/", http.StripPrefix("/dev/oidc", p.Handler()))
	return p, srv, issuer
}

func getJSON(t *testing.T, url string, into any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
		t.Fatalf("GET %s: decode: %v", url, err)
	}
}

// publishedKIDs lists the kids /keys serves, checking each is an RS256
// signing key.
func publishedKIDs(t *testing.T, issuer string) []string {
	t.Helper()
	var set jose.JSONWebKeySet
	getJSON(t, issuer+"/keys", &set)
	var kids []string
	for _, k := range set.Keys {
		if k.Algorithm != "RS256" || k.Use != "sig" || !k.IsPublic() {
			t.Errorf("key %s: alg %q use %q public %v, want an RS256 public signing key", k.KeyID, k.Algorithm, k.Use, k.IsPublic())
		}
		kids = append(kids, k.KeyID)
	}
	return kids
}

// verifyWithJWKS checks token's signature against what /keys publishes and
// returns the kid that signed it.
func verifyWithJWKS(t *testing.T, issuer, token string) string {
	t.Helper()
	var set jose.JSONWebKeySet
	getJSON(t, issuer+"/keys", &set)
	jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	kid := jws.Signatures[0].Header.KeyID
	keys := set.Key(kid)
	if len(keys) != 1 {
		t.Fatalf("kid %q: %d published keys, want 1", kid, len(keys))
	}
	if _, err := jws.Verify(keys[0]); err != nil {
		t.Fatalf("kid %q: %v", kid, err)
	}
	return kid
}

func TestNewReusesTheFirstKey(t *testing.T) {
	tests := []struct {
		name       string
		concurrent bool
	}{
		{"one after the other", false},
		// Two processes starting together both see no key; the fixed first
		// kid makes the loser's insert fail and it reloads the winner's.
		{"racing", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := pgtest.Pool(t)
			ctx := context.Background()
			const n = 4
			providers := make([]*devoidc.Provider, n)
			errs := make([]error, n)
			if tt.concurrent {
				var wg sync.WaitGroup
				for i := range n {
					wg.Go(func() { providers[i], errs[i] = devoidc.New(ctx, pool, "http://dev.test/dev/oidc", audience) })
				}
				wg.Wait()
			} else {
				for i := range n {
					providers[i], errs[i] = devoidc.New(ctx, pool, "http://dev.test/dev/oidc", audience)
				}
			}
			var kids []string
			for i, p := range providers {
				if errs[i] != nil {
					t.Fatalf("New #%d: %v", i, errs[i])
				}
				tok, err := p.Mint(ctx, "ada@example.com", "", time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				kids = append(kids, headerKID(t, tok))
			}
			if kids[0] == "" || len(slices.Compact(slices.Clone(kids))) != 1 {
				t.Errorf("providers sign with %v, want one key", kids)
			}
			_, _, issuer := serve(t, pool)
			if got := publishedKIDs(t, issuer); !slices.Equal(got, kids[:1]) {
				t.Errorf("published %v, want only %v", got, kids[:1])
			}
		})
	}
}

func headerKID(t *testing.T, token string) string {
	t.Helper()
	jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	return jws.Signatures[0].Header.KeyID
}

func TestRotateAndRemoveChangeKeys(t *testing.T) {
	ctx := context.Background()
	p, _, issuer := serve(t, pgtest.Pool(t))

	first := publishedKIDs(t, issuer)
	if len(first) != 1 {
		t.Fatalf("a new provider publishes %v, want one key", first)
	}
	old := first[0]

	rotated, err := p.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := publishedKIDs(t, issuer), []string{rotated, old}; !slices.Equal(got, want) {
		t.Fatalf("after Rotate: published %v, want %v (newest first)", got, want)
	}
	tok, err := p.Mint(ctx, "ada@example.com", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if kid := verifyWithJWKS(t, issuer, tok); kid != rotated {
		t.Errorf("Mint after Rotate signed with %s, want the new key %s", kid, rotated)
	}

	if err := p.Remove(ctx, old); err != nil {
		t.Fatal(err)
	}
	if got := publishedKIDs(t, issuer); !slices.Equal(got, []string{rotated}) {
		t.Fatalf("after Remove: published %v, want [%s]", got, rotated)
	}
	if err := p.Remove(ctx, old); err == nil {
		t.Error("removing a key twice succeeded")
	}

	// The removed key is still remembered, for tests of verifiers.
	stale, err := p.MintWithKey(ctx, old, "ada@example.com", "", time.Minute)
	if err != nil {
		t.Fatalf("MintWithKey of a removed key: %v", err)
	}
	if kid := headerKID(t, stale); kid != old {
		t.Errorf("MintWithKey signed with %s, want %s", kid, old)
	}
	if _, err := p.MintWithKey(ctx, "never-existed", "ada@example.com", "", time.Minute); err == nil {
		t.Error("MintWithKey of an unknown key succeeded")
	}
}

func TestDiscovery(t *testing.T) {
	_, _, issuer := serve(t, pgtest.Pool(t))
	var doc map[string]any
	getJSON(t, issuer+"/.well-known/openid-configuration", &doc)
	want := map[string]any{
		"issuer":                                issuer,
		"jwks_uri":                              issuer + "/keys",
		"userinfo_endpoint":                     issuer + "/userinfo",
		"id_token_signing_alg_values_supported": []any{"RS256"},
		"response_types_supported":              []any{"code"},
		"subject_types_supported":               []any{"public"},
	}
	for k, v := range want {
		if got, _ := json.Marshal(doc[k]); string(got) != mustJSON(t, v) {
			t.Errorf("%s = %s, want %s", k, got, mustJSON(t, v))
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestMintClaims(t *testing.T) {
	ctx := context.Background()
	p, _, issuer := serve(t, pgtest.Pool(t))
	tok, err := p.Mint(ctx, " Ada.Lovelace@Example.com ", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	verifyWithJWKS(t, issuer, tok)
	jws, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Iss   string   `json:"iss"`
		Aud   []string `json:"aud"`
		Sub   string   `json:"sub"`
		Email string   `json:"email"`
		Name  string   `json:"name"`
		EV    bool     `json:"email_verified"`
		Iat   int64    `json:"iat"`
		Nbf   int64    `json:"nbf"`
		Exp   int64    `json:"exp"`
		Jti   string   `json:"jti"`
	}
	if err := json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &c); err != nil {
		t.Fatal(err)
	}
	if c.Iss != issuer || !slices.Equal(c.Aud, []string{audience}) || c.Email != "ada.lovelace@example.com" ||
		c.Name != "ada.lovelace" || !c.EV || c.Jti == "" || c.Exp-c.Iat != 3600 || c.Nbf != c.Iat {
		t.Errorf("claims %+v", c)
	}
	if c.Sub != devoidc.Subject("ada.lovelace@example.com") || !strings.HasPrefix(c.Sub, "dev-") || len(c.Sub) != len("dev-")+32 {
		t.Errorf("sub %q, want dev- and 32 hex digits derived from the email", c.Sub)
	}
	again, err := p.Mint(ctx, "ada.lovelace@example.com", "Ada", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if again == tok {
		t.Error("two mints gave the same token; jti should differ")
	}

	if _, err := p.Mint(ctx, "not-an-email", "", time.Hour); err == nil {
		t.Error("Mint accepted an address without @")
	}
}

func TestUserinfo(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)
	p, srv, issuer := serve(t, pool)
	valid, err := p.Mint(ctx, "grace@example.com", "Grace Hopper", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := p.Mint(ctx, "grace@example.com", "", -time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// Same keys (same database), other issuer.
	other, err := devoidc.New(ctx, pool, srv.URL+"/elsewhere", audience)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.Mint(ctx, "grace@example.com", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	oldKID := headerKID(t, valid)
	if _, err := p.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Remove(ctx, oldKID); err != nil {
		t.Fatal(err)
	}
	removed, err := p.MintWithKey(ctx, oldKID, "grace@example.com", "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	current, err := p.Mint(ctx, "grace@example.com", "Grace Hopper", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name   string
		header string
		want   int
	}{
		{"valid", "Bearer " + current, http.StatusOK},
		{"scheme is case-insensitive", "bearer " + current, http.StatusOK},
		{"no header", "", http.StatusUnauthorized},
		{"basic auth", "Basic Z3JhY2U6aG9wcGVy", http.StatusUnauthorized},
		{"garbage", "Bearer not.a.jwt", http.StatusUnauthorized},
		{"expired", "Bearer " + expired, http.StatusUnauthorized},
		{"other issuer", "Bearer " + foreign, http.StatusUnauthorized},
		{"removed key", "Bearer " + removed, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, issuer+"/userinfo", nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.header != "" {
				req.Header.Set("Authorization", tt.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status %s, want %d", resp.Status, tt.want)
			}
			if tt.want != http.StatusOK {
				if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer error="invalid_token"` {
					t.Errorf("WWW-Authenticate %q", got)
				}
				return
			}
			var info map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
				t.Fatal(err)
			}
			want := map[string]any{"sub": devoidc.Subject("grace@example.com"), "email": "grace@example.com",
				"email_verified": true, "name": "Grace Hopper"}
			if mustJSON(t, info) != mustJSON(t, want) {
				t.Errorf("userinfo %v, want %v", info, want)
			}
		})
	}
}

func TestTransport(t *testing.T) {
	ctx := context.Background()
	// Nothing listens on port 1: only the in-process transport can answer.
	const issuer = "http://127.0.0.1:1/dev/oidc"
	p, err := devoidc.New(ctx, pgtest.Pool(t), issuer, audience)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/dev/oidc/", http.StripPrefix("/dev/oidc", p.Handler()))
	c := &http.Client{Transport: devoidc.Transport(mux)}

	tok, err := p.Mint(ctx, "linus@example.com", "", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, issuer+"/userinfo", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var info struct{ Email string }
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" || info.Email != "linus@example.com" {
		t.Errorf("status %s, content type %q, email %q", resp.Status, resp.Header.Get("Content-Type"), info.Email)
	}

	resp, err = c.Get(issuer + "/nowhere")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown path: %s, want 404", resp.Status)
	}

	panicky := &http.Client{Transport: devoidc.Transport(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }))}
	if resp, err := panicky.Get(issuer + "/keys"); err == nil {
		resp.Body.Close()
		t.Error("a panicking handler gave a response, want an error")
	}
}
