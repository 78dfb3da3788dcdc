package registryproxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/flock-io/flock-api/internal/registry/registrytest"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/promtest"
)

// TestBlobCache pulls a layer through the proxy in front of Distribution
// twice: the first pull keeps it, the second is served from the cache, and
// the registry still decides who gets it.
func TestBlobCache(t *testing.T) {
	t.Parallel()
	w := newWorld(t, newEnv(t, registrytest.Open(t, registrytest.Distribution(t))))
	web, other := w.edge.repo("web"), w.other.repo("web")
	img, _ := w.push(web+":v1", w.devKey)
	w.push(other+":v1", w.devKey) // the repository exists, without this layer
	layers, err := img.Layers()
	must(t, err)
	ld, want := blobOf(t, layers[0])
	path := "/v2/" + web + "/blobs/" + ld.String()
	_, tok := w.token("ci", w.devKey, "repository:"+web+":pull,push,delete")
	counter := func(name string) float64 {
		return promtest.Sum(t, w.metrics, "flock_registry_proxy_cache_"+name+"_total")
	}

	resp, body := w.call(http.MethodGet, path, tok, nil, nil)
	if resp.StatusCode != http.StatusOK || body != string(want) {
		t.Fatalf("first pull = %d, %d bytes (want %d)", resp.StatusCode, len(body), len(want))
	}
	if counter("hits") != 0 {
		t.Fatalf("the first pull was a hit")
	}
	// The fill is kept when the proxy closes the upstream body, which
	// may be after the client has read the last byte.
	testutil.Eventually(t, "the layer to be kept", func() error {
		if n := counter("fills"); n != 1 {
			return fmt.Errorf("%v fills", n)
		}
		return nil
	})

	t.Run("served from the cache", func(t *testing.T) {
		resp, body := w.call(http.MethodGet, path, tok, nil, nil)
		if resp.StatusCode != http.StatusOK || body != string(want) {
			t.Fatalf("cached pull = %d, %d bytes (want %d)", resp.StatusCode, len(body), len(want))
		}
		if counter("hits") != 1 {
			t.Errorf("hits = %v, want 1", counter("hits"))
		}
		for k, v := range map[string]string{"Docker-Content-Digest": ld.String(), "Content-Length": strconv.Itoa(len(want)),
			"Docker-Distribution-Api-Version": "registry/2.0"} {
			if got := resp.Header.Get(k); got != v {
				t.Errorf("%s = %q, want %q", k, got, v)
			}
		}
		resp, body = w.call(http.MethodGet, path, tok, http.Header{"Range": {"bytes=10-19"}}, nil)
		if resp.StatusCode != http.StatusPartialContent || body != string(want[10:20]) {
			t.Errorf("range = %d %q, want 206 %q", resp.StatusCode, body, want[10:20])
		}
		resp, body = w.call(http.MethodHead, path, tok, nil, nil)
		if resp.StatusCode != http.StatusOK || body != "" || resp.ContentLength != int64(len(want)) {
			t.Errorf("HEAD = %d, length %d, body %q", resp.StatusCode, resp.ContentLength, body)
		}
		if counter("hits") != 3 {
			t.Errorf("hits = %v, want 3", counter("hits"))
		}
	})

	t.Run("only where the registry holds it", func(t *testing.T) {
		_, otherTok := w.token("ci", w.devKey, "repository:"+other+":pull")
		resp, body := w.call(http.MethodGet, "/v2/"+other+"/blobs/"+ld.String(), otherTok, nil, nil)
		expect(t, "the cached layer from a repository without it", resp, body, http.StatusNotFound, "BLOB_UNKNOWN")
		r1 := w.r1.repo("web")
		_, rivalTok := w.token("ci", w.rivalKy, "repository:"+r1+":pull")
		resp, body = w.call(http.MethodGet, "/v2/"+r1+"/blobs/"+ld.String(), rivalTok, nil, nil)
		expect(t, "the cached layer from another organisation", resp, body, http.StatusNotFound, "")
		_, devTok := w.token(w.dev.id.String(), w.dev.token, "repository:"+web+":pull")
		resp, body = w.call(http.MethodGet, path, devTok, nil, nil)
		expect(t, "the cached layer to a device whose releases do not name it", resp, body, http.StatusForbidden, "DENIED")
	})

	t.Run("many first pulls at once", func(t *testing.T) {
		// Another layer, pulled by eight clients at once before any
		// copy is kept: each gets it whole, and it is kept once.
		l2, want2 := blobOf(t, layers[1])
		fills := counter("fills")
		path2 := "/v2/" + web + "/blobs/" + l2.String()
		type got struct {
			status int
			body   string
		}
		results := make(chan got, 8)
		for range 8 {
			go func() {
				req, _ := http.NewRequest(http.MethodGet, w.srv.URL+path2, nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					results <- got{status: -1, body: err.Error()}
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				results <- got{resp.StatusCode, string(b)}
			}()
		}
		for range 8 {
			if g := <-results; g.status != http.StatusOK || g.body != string(want2) {
				t.Errorf("a concurrent first pull = %d, %d bytes (want %d)", g.status, len(g.body), len(want2))
			}
		}
		testutil.Eventually(t, "the layer to be kept once", func() error {
			if n := counter("fills") - fills; n != 1 {
				return fmt.Errorf("%v fills", n)
			}
			return nil
		})
		hits := counter("hits")
		resp, body := w.call(http.MethodGet, path2, tok, nil, nil)
		if resp.StatusCode != http.StatusOK || body != string(want2) || counter("hits") != hits+1 {
			t.Errorf("the pull after = %d, %d bytes, hits %v -> %v", resp.StatusCode, len(body), hits, counter("hits"))
		}
	})

	t.Run("not after the registry deleted it", func(t *testing.T) {
		resp, body := w.call(http.MethodDelete, path, tok, nil, nil)
		expect(t, "DELETE", resp, body, http.StatusAccepted, "")
		resp, body = w.call(http.MethodGet, path, tok, nil, nil)
		expect(t, "the deleted layer", resp, body, http.StatusNotFound, "BLOB_UNKNOWN")
	})
}

// blobOf is a layer's digest and bytes as the registry holds them.
func blobOf(t *testing.T, l v1.Layer) (v1.Hash, []byte) {
	t.Helper()
	d, err := l.Digest()
	must(t, err)
	rc, err := l.Compressed()
	must(t, err)
	defer rc.Close()
	b, err := io.ReadAll(rc)
	must(t, err)
	return d, b
}
