package registryproxy_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/registry/registrytest"
	"github.com/flock-io/flock-api/internal/registryproxy"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/promtest"
)

// world is two organisations: acme with fleets edge and other, rival with
// fleet r1; API keys of several roles and a device in acme/edge.
type world struct {
	*env
	acme, rival                org
	edge, other, r1            fleet
	devKey, viewerKey, rivalKy string
	dev                        device
}

func newWorld(t *testing.T, e *env) *world {
	w := &world{env: e}
	w.acme, w.rival = e.org("acme"), e.org("rival")
	w.edge, w.other, w.r1 = e.fleet(w.acme, "edge"), e.fleet(w.acme, "other"), e.fleet(w.rival, "r1")
	w.devKey, w.viewerKey, w.rivalKy = e.key(w.acme, db.OrgRoleDeveloper), e.key(w.acme, db.OrgRoleViewer), e.key(w.rival, db.OrgRoleDeveloper)
	w.dev = e.device(w.edge)
	return w
}

func (w *world) push(repoTag, secret string) (v1.Image, v1.Hash) {
	w.t.Helper()
	img, err := random.Image(4096, 2)
	must(w.t, err)
	must(w.t, remote.Write(w.ref(repoTag), img, w.opts(keyAuth(secret))...))
	d, err := img.Digest()
	must(w.t, err)
	return img, d
}

// statusOf is the HTTP status and first error code of a client error.
func statusOf(err error) (int, string) {
	var te *transport.Error
	if !errors.As(err, &te) {
		return 0, ""
	}
	code := ""
	if len(te.Errors) > 0 {
		code = string(te.Errors[0].Code)
	}
	return te.StatusCode, code
}

func TestProxy(t *testing.T) {
	for _, up := range registrytest.Upstreams() {
		t.Run(up.Name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, newEnv(t, up.Open(t)))
			testProxy(t, w)
		})
	}
}

func testProxy(t *testing.T, w *world) {
	web := w.edge.repo("web")
	img, d := w.push(web+":v1", w.devKey)
	_, otherD := w.push(w.other.repo("web")+":v1", w.devKey)
	_, rivalD := w.push(w.r1.repo("web")+":v1", w.rivalKy)

	t.Run("challenge", func(t *testing.T) {
		resp, body := w.call(http.MethodGet, "/v2/", "", nil, nil)
		expect(t, "GET /v2/ anonymous", resp, body, http.StatusUnauthorized, "UNAUTHORIZED")
		want := fmt.Sprintf(`Bearer realm="%s/registry/token",service="%s"`, w.srv.URL, w.host)
		if got := resp.Header.Get("WWW-Authenticate"); got != want {
			t.Errorf("challenge = %s, want %s", got, want)
		}
		resp, body = w.call(http.MethodPut, "/v2/"+web+"/manifests/v2", "", nil, nil)
		expect(t, "PUT anonymous", resp, body, http.StatusUnauthorized, "UNAUTHORIZED")
		if got := resp.Header.Get("WWW-Authenticate"); !strings.HasSuffix(got, `scope="repository:`+web+`:pull,push"`) {
			t.Errorf("challenge = %s", got)
		}
		if status, _ := w.token("", "", "repository:"+web+":pull"); status != http.StatusUnauthorized {
			t.Errorf("anonymous token request = %d, want 401", status)
		}
		if status, _ := w.token("x", "flk_nonsense", "repository:"+web+":pull"); status != http.StatusUnauthorized {
			t.Errorf("bad key token request = %d, want 401", status)
		}
		// A device token is not a registry token, and a registry token is
		// not a device token.
		resp, body = w.call(http.MethodGet, "/v2/", w.dev.token, nil, nil)
		expect(t, "GET /v2/ with a device token", resp, body, http.StatusUnauthorized, "UNAUTHORIZED")
		_, tok := w.token(w.dev.id.String(), w.dev.token)
		if _, err := w.authn.Authenticate(t.Context(), "Bearer "+tok); err == nil {
			t.Error("a registry token authenticated at the API")
		}
		resp, body = w.call(http.MethodGet, "/v2/", tok, nil, nil)
		expect(t, "GET /v2/ with a registry token", resp, body, http.StatusOK, "")
		// A device logs in with its own uuid only.
		if status, _ := w.token("someone", w.dev.token); status != http.StatusUnauthorized {
			t.Errorf("device token under another user name = %d, want 401", status)
		}
	})

	t.Run("device pulls by digest what its releases name", func(t *testing.T) {
		_, err := remote.Image(w.ref(web+"@"+d.String()), w.opts(w.dev.auth())...)
		if s, c := statusOf(err); s != http.StatusForbidden || c != "DENIED" {
			t.Fatalf("pull before a release names it: %v", err)
		}
		w.release(w.edge, w.host+"/"+web+":v1", d)
		// At once, though the refusal above is cached: a device is
		// nudged to a new release sooner than the cache forgets, so a
		// refusal is read afresh.
		got, err := remote.Image(w.ref(web+"@"+d.String()), w.opts(w.dev.auth())...)
		if err != nil {
			t.Fatalf("pull right after a release names it: %v", err)
		}
		layers, err := got.Layers()
		must(t, err)
		want, _ := img.Layers()
		for i, l := range layers {
			rc, err := l.Compressed()
			must(t, err)
			b, err := io.ReadAll(rc)
			rc.Close()
			must(t, err)
			wrc, _ := want[i].Compressed()
			wb, _ := io.ReadAll(wrc)
			if !bytes.Equal(b, wb) {
				t.Errorf("layer %d differs", i)
			}
		}
		if n := promtest.Sum(t, w.metrics, "flock_registry_proxy_served_bytes_total", "op", "blob_get"); n < 4096 {
			t.Errorf("served blob bytes = %v", n)
		}
		if n := promtest.Sum(t, w.metrics, "flock_registry_proxy_requests_total", "op", "manifest_get", "status", "200"); n < 1 {
			t.Errorf("manifest_get 200 = %v", n)
		}

		_, err = remote.Image(w.ref(web+":v1"), w.opts(w.dev.auth())...)
		if s, c := statusOf(err); s != http.StatusForbidden || c != "DENIED" {
			t.Errorf("device pull by tag: %v", err)
		}
		_, err = remote.Image(w.ref(w.other.repo("web")+"@"+otherD.String()), w.opts(w.dev.auth())...)
		if s, c := statusOf(err); s != http.StatusForbidden || c != "DENIED" {
			t.Errorf("device pull of another fleet's image: %v", err)
		}
		_, err = remote.Image(w.ref(w.r1.repo("web")+"@"+rivalD.String()), w.opts(w.dev.auth())...)
		if s, c := statusOf(err); s != http.StatusForbidden || c != "DENIED" {
			t.Errorf("device pull of another organisation's image: %v", err)
		}
		// Nor can it push.
		_, err = random.Image(16, 1)
		must(t, err)
		if err := remote.Write(w.ref(web+":mine"), got, w.opts(w.dev.auth())...); err == nil {
			t.Error("a device pushed")
		}

		// Range reads of an allowed blob.
		_, tok := w.token(w.dev.id.String(), w.dev.token, "repository:"+web+":pull")
		m, _ := img.Manifest()
		resp, body := w.call(http.MethodGet, "/v2/"+web+"/blobs/"+m.Layers[0].Digest.String(), tok, http.Header{"Range": {"bytes=0-9"}}, nil)
		if resp.StatusCode != http.StatusPartialContent || len(body) != 10 {
			t.Errorf("range GET = %d, %d bytes", resp.StatusCode, len(body))
		}
		resp, body = w.call(http.MethodHead, "/v2/"+web+"/blobs/"+m.Layers[0].Digest.String(), tok, nil, nil)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != m.Layers[0].Digest.String() {
			t.Errorf("HEAD blob = %d %v %s", resp.StatusCode, resp.Header, body)
		}
		resp, body = w.call(http.MethodGet, "/v2/"+web+"/tags/list", tok, nil, nil)
		expect(t, "device tag list", resp, body, http.StatusForbidden, "DENIED")
	})

	t.Run("another organisation cannot tell a repository from a missing one", func(t *testing.T) {
		ask := func(repo, path string) (int, string) {
			_, tok := w.token("ci", w.rivalKy, "repository:"+repo+":pull")
			resp, body := w.call(http.MethodGet, "/v2/"+repo+path, tok, nil, nil)
			return resp.StatusCode, body
		}
		m, _ := img.Manifest()
		for _, path := range []string{"/manifests/" + d.String(), "/manifests/v1", "/blobs/" + m.Layers[0].Digest.String(), "/tags/list"} {
			s1, b1 := ask(web, path)
			s2, b2 := ask(w.edge.repo("nothing"), path)
			s3, b3 := ask("nosuch/fleet/web", path)
			if s1 != s2 || s1 != s3 || b1 != b2 || b1 != b3 || s1 != http.StatusNotFound {
				t.Errorf("%s: existing %d %s, missing %d %s, unknown org %d %s", path, s1, b1, s2, b2, s3, b3)
			}
		}
		_, err := remote.Image(w.ref(web+"@"+d.String()), w.opts(keyAuth(w.rivalKy))...)
		if s, _ := statusOf(err); s != http.StatusNotFound {
			t.Errorf("rival pull: %v", err)
		}
		if err := remote.Write(w.ref(web+":rival"), img, w.opts(keyAuth(w.rivalKy))...); err == nil {
			t.Error("rival pushed into acme")
		}
	})

	t.Run("viewer pulls, cannot push or delete", func(t *testing.T) {
		if _, err := remote.Image(w.ref(web+":v1"), w.opts(keyAuth(w.viewerKey))...); err != nil {
			t.Errorf("viewer pull: %v", err)
		}
		err := remote.Write(w.ref(web+":viewer"), img, w.opts(keyAuth(w.viewerKey))...)
		if s, c := statusOf(err); s != http.StatusForbidden || c != "DENIED" {
			t.Errorf("viewer push: %v", err)
		}
		err = remote.Delete(w.ref(web+"@"+d.String()), w.opts(keyAuth(w.viewerKey))...)
		if s, c := statusOf(err); s != http.StatusForbidden || c != "DENIED" {
			t.Errorf("viewer delete: %v", err)
		}
		_, tok := w.token("ci", w.viewerKey, "repository:"+web+":pull,push,delete")
		resp, body := w.call(http.MethodPost, "/v2/"+web+"/blobs/uploads/", tok, nil, nil)
		expect(t, "viewer upload", resp, body, http.StatusForbidden, "DENIED")
	})

	t.Run("uploads: chunked, monolithic, mount, bad manifests", func(t *testing.T) {
		api := w.edge.repo("api")
		_, tok := w.token("ci", w.devKey, "repository:"+api+":pull,push", "repository:"+web+":pull")
		// Chunked, in two PATCHes with Content-Range.
		resp, body := w.call(http.MethodPost, "/v2/"+api+"/blobs/uploads/", tok, nil, nil)
		expect(t, "start upload", resp, body, http.StatusAccepted, "")
		loc := resp.Header.Get("Location")
		if !strings.HasPrefix(loc, "/v2/"+api+"/blobs/uploads/") {
			t.Fatalf("upload Location %q is not the proxy's path", loc)
		}
		blob := bytes.Repeat([]byte("flock"), 3000)
		h, _, _ := v1.SHA256(bytes.NewReader(blob))
		half := len(blob) / 2
		resp, body = w.call(http.MethodPatch, loc, tok, http.Header{"Content-Range": {fmt.Sprintf("0-%d", half-1)}, "Content-Type": {"application/octet-stream"}}, bytes.NewReader(blob[:half]))
		expect(t, "first chunk", resp, body, http.StatusAccepted, "")
		loc = resp.Header.Get("Location")
		if got := resp.Header.Get("Range"); got != fmt.Sprintf("0-%d", half-1) {
			t.Errorf("Range after the first chunk = %q", got)
		}
		resp, body = w.call(http.MethodPatch, loc, tok, http.Header{"Content-Range": {fmt.Sprintf("%d-%d", half, len(blob)-1)}, "Content-Type": {"application/octet-stream"}}, bytes.NewReader(blob[half:]))
		expect(t, "second chunk", resp, body, http.StatusAccepted, "")
		loc = resp.Header.Get("Location")
		sep := "?"
		if strings.Contains(loc, "?") {
			sep = "&"
		}
		resp, body = w.call(http.MethodPut, loc+sep+"digest="+h.String(), tok, nil, nil)
		expect(t, "finish upload", resp, body, http.StatusCreated, "")
		if resp.Header.Get("Docker-Content-Digest") != h.String() {
			t.Errorf("Docker-Content-Digest = %q", resp.Header.Get("Docker-Content-Digest"))
		}
		resp, _ = w.call(http.MethodHead, "/v2/"+api+"/blobs/"+h.String(), tok, nil, nil)
		if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(blob)) {
			t.Errorf("HEAD uploaded blob = %d, %d bytes", resp.StatusCode, resp.ContentLength)
		}

		// Monolithic (POST, then the whole blob in the PUT) with a wrong
		// digest: refused, nothing stored.
		bad, _, _ := v1.SHA256(bytes.NewReader([]byte("not this")))
		resp, body = w.call(http.MethodPost, "/v2/"+api+"/blobs/uploads/", tok, nil, nil)
		expect(t, "start upload", resp, body, http.StatusAccepted, "")
		loc = resp.Header.Get("Location")
		sep = "?"
		if strings.Contains(loc, "?") {
			sep = "&"
		}
		resp, body = w.call(http.MethodPut, loc+sep+"digest="+bad.String(), tok, http.Header{"Content-Type": {"application/octet-stream"}}, bytes.NewReader([]byte("other")))
		expect(t, "monolithic upload with a wrong digest", resp, body, http.StatusBadRequest, "DIGEST_INVALID")
		resp, _ = w.call(http.MethodHead, "/v2/"+api+"/blobs/"+bad.String(), tok, nil, nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("HEAD refused blob = %d", resp.StatusCode)
		}

		// Cross-repository mount from web, which the key may pull.
		m, _ := img.Manifest()
		resp, body = w.call(http.MethodPost, "/v2/"+api+"/blobs/uploads/?mount="+m.Layers[0].Digest.String()+"&from="+web, tok, nil, nil)
		expect(t, "mount", resp, body, http.StatusCreated, "")
		// A mount from a repository the key cannot read starts an upload.
		_, tok2 := w.token("ci", w.devKey, "repository:"+api+":pull,push", "repository:"+w.r1.repo("web")+":pull")
		resp, body = w.call(http.MethodPost, "/v2/"+api+"/blobs/uploads/?mount="+rivalD.String()+"&from="+w.r1.repo("web"), tok2, nil, nil)
		expect(t, "mount from another organisation", resp, body, http.StatusAccepted, "")

		// A manifest naming blobs the repository lacks.
		lonely, _ := random.Image(128, 1)
		raw, _ := lonely.RawManifest()
		ld, _ := lonely.Digest()
		mt, _ := lonely.MediaType()
		resp, body = w.call(http.MethodPut, "/v2/"+api+"/manifests/"+ld.String(), tok, http.Header{"Content-Type": {string(mt)}}, bytes.NewReader(raw))
		expect(t, "manifest with unknown blobs", resp, body, http.StatusBadRequest, "MANIFEST_BLOB_UNKNOWN")
		resp, _ = w.call(http.MethodHead, "/v2/"+api+"/manifests/"+ld.String(), tok, nil, nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("HEAD refused manifest = %d", resp.StatusCode)
		}
		// An oversized manifest never reaches the registry.
		huge := append([]byte(`{"schemaVersion":2,"annotations":{"x":"`), bytes.Repeat([]byte("a"), registryproxy.MaxManifestSize)...)
		huge = append(huge, `"}}`...)
		resp, body = w.call(http.MethodPut, "/v2/"+api+"/manifests/huge", tok, http.Header{"Content-Type": {string(mt)}}, bytes.NewReader(huge))
		expect(t, "oversized manifest", resp, body, http.StatusRequestEntityTooLarge, "MANIFEST_INVALID")
		// The same without a length (chunked).
		resp, body = w.call(http.MethodPut, "/v2/"+api+"/manifests/huge", tok, http.Header{"Content-Type": {string(mt)}}, io.MultiReader(bytes.NewReader(huge)))
		expect(t, "oversized chunked manifest", resp, body, http.StatusRequestEntityTooLarge, "MANIFEST_INVALID")
		resp, _ = w.call(http.MethodGet, "/v2/"+api+"/manifests/huge", tok, nil, nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET oversized manifest = %d", resp.StatusCode)
		}
	})

	t.Run("concurrent pushes and pulls", func(t *testing.T) {
		const pushers, pullers = 4, 8
		var wg sync.WaitGroup
		errs := make(chan error, pushers+pullers)
		for i := range pushers {
			wg.Go(func() {
				img, err := random.Image(8192, 3)
				if err == nil {
					err = remote.Write(w.ref(fmt.Sprintf("%s:c%d", w.edge.repo("batch"), i)), img, w.opts(keyAuth(w.devKey))...)
				}
				errs <- err
			})
		}
		for range pullers {
			wg.Go(func() {
				got, err := remote.Image(w.ref(web+"@"+d.String()), w.opts(w.dev.auth())...)
				if err == nil {
					var ls []v1.Layer
					if ls, err = got.Layers(); err == nil {
						for _, l := range ls {
							var rc io.ReadCloser
							if rc, err = l.Compressed(); err != nil {
								break
							}
							_, err = io.Copy(io.Discard, rc)
							rc.Close()
						}
					}
				}
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("a deleted device is refused", func(t *testing.T) {
		_, tok := w.token(w.dev.id.String(), w.dev.token, "repository:"+web+":pull")
		resp, body := w.call(http.MethodHead, "/v2/"+web+"/manifests/"+d.String(), tok, nil, nil)
		expect(t, "HEAD before deletion", resp, body, http.StatusOK, "")
		w.exec(`DELETE FROM devices WHERE id = $1`, w.dev.id)
		if status, _ := w.token(w.dev.id.String(), w.dev.token, "repository:"+web+":pull"); status != http.StatusUnauthorized {
			t.Errorf("token request of a deleted device = %d", status)
		}
		testutil.Eventually(t, "the deleted device's token to be refused", func() error {
			resp, body := w.call(http.MethodHead, "/v2/"+web+"/manifests/"+d.String(), tok, nil, nil)
			if resp.StatusCode != http.StatusUnauthorized {
				return fmt.Errorf("HEAD = %d %s", resp.StatusCode, body)
			}
			return nil
		})
	})
}
