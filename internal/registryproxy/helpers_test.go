package registryproxy_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/registry"
	"github.com/flock-io/flock-api/internal/registryproxy"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

// env is a proxy in front of one upstream, with a database of two
// organisations.
type env struct {
	t       *testing.T
	pool    *pgxpool.Pool
	tokens  *devicetoken.Service
	authn   *auth.Authenticator
	reg     *registry.Registry
	proxy   *registryproxy.Proxy
	metrics *prometheus.Registry
	srv     *httptest.Server
	host    string // the proxy's host:port
}

const issuer = "http://flock.test"

func newEnv(t *testing.T, reg *registry.Registry) *env {
	t.Helper()
	e := &env{t: t, pool: pgtest.Pool(t), reg: reg, metrics: prometheus.NewRegistry()}
	log := slog.New(slog.DiscardHandler)
	var err error
	e.tokens, err = devicetoken.New(t.Context(), e.pool, devicetoken.Config{Issuer: issuer, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	e.authn = auth.NewAuthenticator(nil, e.tokens, issuer, e.pool, log)
	var h http.Handler = http.NotFoundHandler()
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(e.srv.Close)
	e.host = strings.TrimPrefix(e.srv.URL, "http://")
	e.proxy, err = registryproxy.New(registryproxy.Config{
		Registry: reg, Pool: e.pool, Authn: e.authn, Tokens: e.tokens,
		Realm: e.srv.URL + "/registry/token", Service: e.host, Log: log, Registerer: e.metrics,
		// Every test through Distribution pulls through the cache too.
		CacheDir: t.TempDir(), CacheSize: 64 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	r := chi.NewRouter()
	e.proxy.Mount(r)
	h = r
	return e
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.pool.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

type org struct {
	id   uuid.UUID
	slug string
}

func (e *env) org(slug string) org {
	e.t.Helper()
	o := org{id: uuid.New(), slug: slug}
	e.exec(`INSERT INTO orgs (id, name, slug) VALUES ($1, $2, $3)`, o.id, slug, slug)
	return o
}

type fleet struct {
	id   uuid.UUID
	org  org
	slug string
}

func (f fleet) repo(service string) string { return f.org.slug + "/" + f.slug + "/" + service }

func (e *env) fleet(o org, slug string) fleet {
	e.t.Helper()
	f := fleet{id: uuid.New(), org: o, slug: slug}
	e.exec(`INSERT INTO fleets (id, org_id, name, slug, architecture) VALUES ($1, $2, $3, $4, 'amd64')`, f.id, o.id, slug, slug)
	return f
}

// key creates an API key of the organisation with the role; its secret.
func (e *env) key(o org, role db.OrgRole) string {
	e.t.Helper()
	id := uuid.New()
	secret, prefix, hash, err := auth.NewAPIKeySecret(id)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := db.New(e.pool).ApiKeyCreate(context.Background(), db.ApiKeyCreateParams{
		ID: id, OrgID: o.id, Name: string(role) + " key", Role: role, Prefix: prefix, SecretHash: hash,
	}); err != nil {
		e.t.Fatal(err)
	}
	return secret
}

type device struct {
	id    uuid.UUID
	token string
}

func (d device) auth() authn.Authenticator {
	return &authn.Basic{Username: d.id.String(), Password: d.token}
}

func (e *env) device(f fleet) device {
	e.t.Helper()
	d := device{id: uuid.New()}
	pub := make([]byte, 32)
	rand.Read(pub)
	e.exec(`INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key)
		VALUES ($1, $2, $3, 'dev', 'generic', 'amd64', $4)`, d.id, f.org.id, f.id, pub)
	tok, _, err := e.tokens.Issue(context.Background(), d.id, f.org.id, f.id)
	if err != nil {
		e.t.Fatal(err)
	}
	d.token = tok
	return d
}

// release creates a final release of the fleet whose service web has image
// (a reference) at digest for amd64; the fleet tracks its latest release,
// so it is its devices' target.
func (e *env) release(f fleet, image string, digest v1.Hash) uuid.UUID {
	e.t.Helper()
	id := uuid.New()
	services, _ := json.Marshal([]map[string]any{{
		"name":   "web",
		"images": map[string]any{"amd64": map[string]string{"image": image, "digest": digest.String()}},
	}})
	e.exec(`INSERT INTO releases (id, org_id, fleet_id, status, services, finalized_at) VALUES ($1, $2, $3, 'final', $4, now())`,
		id, f.org.id, f.id, services)
	return id
}

func keyAuth(secret string) authn.Authenticator {
	return &authn.Basic{Username: "ci", Password: secret}
}

func (e *env) ref(s string) name.Reference {
	e.t.Helper()
	r, err := name.ParseReference(e.host+"/"+s, name.Insecure)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) opts(a authn.Authenticator) []remote.Option {
	return []remote.Option{remote.WithAuth(a), remote.WithContext(e.t.Context()),
		remote.WithRetryBackoff(remote.Backoff{Steps: 1})}
}

// token asks the token endpoint as a client would.
func (e *env) token(user, pass string, scopes ...string) (int, string) {
	e.t.Helper()
	q := url.Values{"service": {e.host}, "scope": scopes}
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/registry/token?"+q.Encode(), nil)
	if pass != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int    `json:"expires_in"`
		IssuedAt    string `json:"issued_at"`
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(body, &out); err != nil || out.Token == "" || out.Token != out.AccessToken || out.ExpiresIn <= 0 || out.ExpiresIn > 300 {
			e.t.Fatalf("token response %s: %v", body, err)
		}
		if _, err := time.Parse(time.RFC3339, out.IssuedAt); err != nil {
			e.t.Fatalf("issued_at %q: %v", out.IssuedAt, err)
		}
	}
	return resp.StatusCode, out.Token
}

// call sends one request to the proxy with a bearer token.
func (e *env) call(method, path, token string, header http.Header, body io.Reader) (*http.Response, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, body)
	if err != nil {
		e.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// errCode is the first distribution error code of a body.
func errCode(body string) string {
	var out struct {
		Errors []struct {
			Code string `json:"code"`
		} `json:"errors"`
	}
	if json.Unmarshal([]byte(body), &out) != nil || len(out.Errors) == 0 {
		return ""
	}
	return out.Errors[0].Code
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func expect(t *testing.T, what string, resp *http.Response, body string, status int, code string) {
	t.Helper()
	if resp.StatusCode != status || (code != "" && errCode(body) != code) {
		t.Errorf("%s = %d %s, want %d %s", what, resp.StatusCode, strings.TrimSpace(body), status, code)
	}
}

var _ = fmt.Sprint
