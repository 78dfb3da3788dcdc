package registryproxy_test

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/registry/registrytest"
	"github.com/flock-io/flock-api/internal/registryproxy"
	"github.com/flock-io/flock-api/internal/testutil"
)

// build inserts an open build of the fleet (with the draft release every
// build has).
func (e *env) build(f fleet) uuid.UUID {
	e.t.Helper()
	rel, id := uuid.New(), uuid.New()
	e.exec(`INSERT INTO releases (id, org_id, fleet_id, status, services) VALUES ($1, $2, $3, 'draft', '[]')`, rel, f.org.id, f.id)
	e.exec(`INSERT INTO builds (id, org_id, fleet_id, release_id, status, architectures, services, source_key, source_bytes)
		VALUES ($1, $2, $3, $4, 'running', '{amd64}', '[]', 'x', 0)`, id, f.org.id, f.id, rel)
	return id
}

// credential signs a build credential the way the builders' dispatcher
// would, for this proxy.
func (e *env) credential(build uuid.UUID) string {
	e.t.Helper()
	c, err := registryproxy.SignBuildCredential(e.tokens, e.srv.URL+"/registry/token", e.host, build, time.Hour)
	must(e.t, err)
	return c
}

func buildAuth(cred string) authn.Authenticator {
	return &authn.Basic{Username: registryproxy.BuildUser, Password: cred}
}

func TestBuildCredentials(t *testing.T) {
	for _, up := range registrytest.Upstreams() {
		t.Run(up.Name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, newEnv(t, up.Open(t)))
			testBuildCredentials(t, w)
		})
	}
}

func testBuildCredentials(t *testing.T, w *world) {
	web := w.edge.repo("web")
	img, _ := w.push(w.other.repo("base")+":v1", w.devKey)
	_, rivalD := w.push(w.r1.repo("web")+":v1", w.rivalKy)
	cred := w.credential(w.build(w.edge))
	realm := w.srv.URL + "/registry/token"

	t.Run("registry access", func(t *testing.T) {
		pull := func(repo string) error {
			_, err := remote.Image(w.ref(repo), w.opts(buildAuth(cred))...)
			return err
		}
		push := func(repo string) error {
			return remote.Write(w.ref(repo), img, w.opts(buildAuth(cred))...)
		}
		for _, c := range []struct {
			name   string
			do     func(string) error
			repo   string
			status int    // 0: succeeds
			code   string // the error code, when status is set
		}{
			{"pull a base image from another fleet of the organisation", pull, w.other.repo("base") + ":v1", 0, ""},
			{"push into its fleet", push, web + ":built", 0, ""},
			{"pull back what it pushed", pull, web + ":built", 0, ""},
			{"push into another fleet of the organisation", push, w.other.repo("base") + ":v2", http.StatusForbidden, "DENIED"},
			{"pull from another organisation", pull, w.r1.repo("web") + "@" + rivalD.String(), http.StatusNotFound, "NAME_UNKNOWN"},
			{"pull from an unknown organisation", pull, "nosuch/fleet/web:v1", http.StatusNotFound, "NAME_UNKNOWN"},
			{"push into another organisation", push, w.r1.repo("web") + ":mine", http.StatusForbidden, "DENIED"},
			{"push into an unknown organisation", push, "nosuch/fleet/web:mine", http.StatusForbidden, "DENIED"},
		} {
			err := c.do(c.repo)
			if s, code := statusOf(err); (c.status == 0) != (err == nil) || s != c.status || code != c.code {
				t.Errorf("%s (%s): %v, want %d %s", c.name, c.repo, err, c.status, c.code)
			}
		}

		// Another organisation's repository answers like a missing one,
		// down to the body.
		ask := func(repo, path string) (int, string) {
			_, tok := w.token(registryproxy.BuildUser, cred, "repository:"+repo+":pull")
			resp, body := w.call(http.MethodGet, "/v2/"+repo+path, tok, nil, nil)
			return resp.StatusCode, body
		}
		for _, path := range []string{"/manifests/" + rivalD.String(), "/manifests/v1", "/tags/list"} {
			s1, b1 := ask(w.r1.repo("web"), path)
			s2, b2 := ask("nosuch/fleet/web", path)
			if s1 != s2 || b1 != b2 || s1 != http.StatusNotFound {
				t.Errorf("%s: another organisation's %d %s, unknown organisation's %d %s", path, s1, b1, s2, b2)
			}
		}
		// The token grants only what the build may do.
		status, tok := w.token(registryproxy.BuildUser, cred, "repository:"+w.other.repo("base")+":pull,push,delete")
		if status != http.StatusOK {
			t.Fatalf("token = %d", status)
		}
		resp, body := w.call(http.MethodPost, "/v2/"+w.other.repo("base")+"/blobs/uploads/", tok, nil, nil)
		expect(t, "upload into another fleet", resp, body, http.StatusForbidden, "DENIED")
	})

	t.Run("refused credentials", func(t *testing.T) {
		b := w.build(w.edge)
		sign := func(claims jwt.Claims) string {
			s, err := w.tokens.Sign(registryproxy.BuildCredentialType, claims)
			must(t, err)
			return s
		}
		otherAudience, err := registryproxy.SignBuildCredential(w.tokens, realm, "registry.elsewhere", b, time.Hour)
		must(t, err)
		otherIssuer, err := registryproxy.SignBuildCredential(w.tokens, "https://elsewhere/registry/token", w.host, b, time.Hour)
		must(t, err)
		past := time.Now().Add(-time.Hour)
		expired := sign(jwt.Claims{Issuer: realm, Subject: "build:" + b.String(), Audience: jwt.Audience{w.host},
			IssuedAt: jwt.NewNumericDate(past.Add(-time.Hour)), Expiry: jwt.NewNumericDate(past)})
		notBuild := sign(jwt.Claims{Issuer: realm, Subject: "api_key:" + uuid.NewString(), Audience: jwt.Audience{w.host},
			Expiry: jwt.NewNumericDate(time.Now().Add(time.Hour))})
		unknownBuild := w.credential(uuid.New())
		_, registryToken := w.token(registryproxy.BuildUser, cred, "repository:"+web+":pull")
		for _, c := range []struct {
			name, user, pass string
		}{
			{"another audience", registryproxy.BuildUser, otherAudience},
			{"another issuer", registryproxy.BuildUser, otherIssuer},
			{"expired", registryproxy.BuildUser, expired},
			{"made up", registryproxy.BuildUser, "flk_madeup"},
			{"a build credential naming no build", registryproxy.BuildUser, notBuild},
			{"a deleted build's", registryproxy.BuildUser, unknownBuild},
			{"a device token", registryproxy.BuildUser, w.dev.token},
			{"an API key", registryproxy.BuildUser, w.devKey},
			{"a registry token", registryproxy.BuildUser, registryToken},
			{"a build credential under another user name", "ci", cred},
			{"a build credential under a device's uuid", w.dev.id.String(), cred},
		} {
			if status, _ := w.token(c.user, c.pass, "repository:"+web+":pull"); status != http.StatusUnauthorized {
				t.Errorf("%s: token request = %d, want 401", c.name, status)
			}
		}
	})

	t.Run("not a token anywhere else", func(t *testing.T) {
		// What GET /v1/me and every other API route authenticate with.
		_, err := w.authn.Authenticate(t.Context(), "Bearer "+cred)
		var pe *problem.Error
		if !errors.As(err, &pe) || pe.Status != http.StatusUnauthorized {
			t.Errorf("API authentication with a build credential: %v, want 401", err)
		}
		if _, err := w.tokens.Verify(t.Context(), cred); err == nil {
			t.Error("a build credential verified as a device token")
		}
		resp, body := w.call(http.MethodGet, "/v2/", cred, nil, nil)
		expect(t, "GET /v2/ with a build credential", resp, body, http.StatusUnauthorized, "UNAUTHORIZED")
		resp, body = w.call(http.MethodGet, "/v2/"+web+"/tags/list", cred, nil, nil)
		expect(t, "tag list with a build credential", resp, body, http.StatusUnauthorized, "UNAUTHORIZED")
	})

	t.Run("an ended build's credentials are revoked", func(t *testing.T) {
		b := w.build(w.edge)
		c := w.credential(b)
		status, tok := w.token(registryproxy.BuildUser, c, "repository:"+web+":pull,push")
		if status != http.StatusOK {
			t.Fatalf("token = %d", status)
		}
		resp, body := w.call(http.MethodGet, "/v2/"+web+"/tags/list", tok, nil, nil)
		expect(t, "tag list before the build ended", resp, body, http.StatusOK, "")
		w.exec(`UPDATE builds SET status = 'failed', finished_at = now() WHERE id = $1`, b)
		if status, _ := w.token(registryproxy.BuildUser, c, "repository:"+web+":pull"); status != http.StatusUnauthorized {
			t.Errorf("token request of an ended build = %d, want 401", status)
		}
		testutil.Eventually(t, "the ended build's registry token to be refused", func() error {
			resp, body := w.call(http.MethodGet, "/v2/"+web+"/tags/list", tok, nil, nil)
			if resp.StatusCode != http.StatusUnauthorized {
				return fmt.Errorf("tag list = %d %s", resp.StatusCode, body)
			}
			return nil
		})
		// Other builds are unaffected.
		if status, _ := w.token(registryproxy.BuildUser, cred, "repository:"+web+":pull"); status != http.StatusOK {
			t.Errorf("token request of an open build = %d", status)
		}
	})
}
