package registry_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/flock-io/flock-api/internal/registry"
	"github.com/flock-io/flock-api/internal/registry/registrytest"
)

func ref(t *testing.T, r *registry.Registry, s string) name.Reference {
	t.Helper()
	n, err := name.ParseReference(r.Base().Host+"/"+s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func opts(r *registry.Registry) []remote.Option {
	return []remote.Option{remote.WithTransport(r.Transport()), remote.WithAuth(authn.Anonymous)}
}

func push(t *testing.T, r *registry.Registry, repo string, img v1.Image) v1.Hash {
	t.Helper()
	if err := remote.Write(ref(t, r, repo+":latest"), img, opts(r)...); err != nil {
		t.Fatalf("push %s: %v", repo, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestRegistry(t *testing.T) {
	for _, up := range registrytest.Upstreams() {
		t.Run(up.Name, func(t *testing.T) {
			t.Parallel()
			r := up.Open(t)
			ctx := t.Context()
			img, err := random.Image(2048, 3)
			if err != nil {
				t.Fatal(err)
			}
			d := push(t, r, "acme/edge/web", img)

			got, err := r.Resolve(ctx, "acme/edge/web", d.String(), "amd64")
			if err != nil {
				t.Fatal(err)
			}
			m, _ := img.Manifest()
			cf, _ := img.ConfigFile()
			if got.Index || got.Manifest != d || got.Config != m.Config.Digest || len(got.Layers) != 3 {
				t.Fatalf("Resolve = %+v", got)
			}
			var size int64
			for i, l := range got.Layers {
				if l.Digest != m.Layers[i].Digest || l.DiffID != cf.RootFS.DiffIDs[i] || l.Size != m.Layers[i].Size || l.MediaType != m.Layers[i].MediaType {
					t.Errorf("layer %d = %+v, want %+v", i, l, m.Layers[i])
				}
				size += l.Size
			}
			if got.Size != size {
				t.Errorf("Size = %d, want %d", got.Size, size)
			}

			l, err := r.Layer(ctx, "acme/edge/web", m.Layers[1].Digest)
			if err != nil {
				t.Fatal(err)
			}
			rc, err := l.Compressed()
			if err != nil {
				t.Fatal(err)
			}
			blob, _ := io.ReadAll(rc)
			rc.Close()
			want, _ := img.Layers()
			wrc, _ := want[1].Compressed()
			wantBlob, _ := io.ReadAll(wrc)
			if !bytes.Equal(blob, wantBlob) {
				t.Error("layer blob differs from the pushed one")
			}

			// An index with two platforms: the armv7 pick, none for riscv64.
			arm, _ := random.Image(512, 1)
			amd, _ := random.Image(512, 1)
			idx := mutate.AppendManifests(empty.Index,
				mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
				mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}}},
			)
			if err := remote.WriteIndex(ref(t, r, "acme/edge/multi:v1"), idx, opts(r)...); err != nil {
				t.Fatal(err)
			}
			id, _ := idx.Digest()
			armDigest, _ := arm.Digest()
			got, err = r.Resolve(ctx, "acme/edge/multi", id.String(), "armv7")
			if err != nil {
				t.Fatal(err)
			}
			if !got.Index || got.Manifest != armDigest || len(got.Layers) != 1 {
				t.Errorf("Resolve(index, armv7) = %+v, want manifest %s", got, armDigest)
			}
			if _, err := r.Resolve(ctx, "acme/edge/multi", id.String(), "riscv64"); !errors.Is(err, registry.ErrNoPlatform) {
				t.Errorf("Resolve(index, riscv64) = %v, want ErrNoPlatform", err)
			}

			// Missing repository, manifest, blob.
			if _, err := r.Resolve(ctx, "acme/edge/nothing", d.String(), "amd64"); !errors.Is(err, registry.ErrNotFound) {
				t.Errorf("Resolve(missing repo) = %v, want ErrNotFound", err)
			}
			if _, err := r.Resolve(ctx, "acme/edge/web", id.String(), "amd64"); !errors.Is(err, registry.ErrNotFound) {
				t.Errorf("Resolve(missing digest) = %v, want ErrNotFound", err)
			}
			if _, err := r.Layer(ctx, "acme/edge/multi", m.Layers[0].Digest); !errors.Is(err, registry.ErrNotFound) {
				t.Errorf("Layer(blob of another repository) = %v, want ErrNotFound", err)
			}

			// A manifest naming a blob the repository lacks is refused and
			// not stored.
			other, _ := random.Image(256, 1)
			raw, _ := other.RawManifest()
			od, _ := other.Digest()
			status, body := do(t, r, http.MethodPut, "/v2/acme/edge/web/manifests/"+od.String(), raw, string(m.MediaType))
			if status != http.StatusBadRequest || !strings.Contains(body, "MANIFEST_BLOB_UNKNOWN") {
				t.Errorf("PUT manifest with unknown blobs = %d %s, want 400 MANIFEST_BLOB_UNKNOWN", status, body)
			}
			if status, _ := do(t, r, http.MethodHead, "/v2/acme/edge/web/manifests/"+od.String(), nil, ""); status != http.StatusNotFound {
				t.Errorf("HEAD refused manifest = %d, want 404", status)
			}
		})
	}
}

func do(t *testing.T, r *registry.Registry, method, path string, body []byte, contentType string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(context.Background(), method, r.Base().String()+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := r.Transport().RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestEmbeddedSurvivesRestart: manifests, tags and blobs pushed to the
// embedded registry are there after it is opened again on its directory.
func TestEmbeddedSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	r := registrytest.EmbeddedAt(t, dir)
	img, _ := random.Image(1024, 2)
	d := push(t, r, "acme/edge/web", img)
	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{Add: img,
		Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}})
	if err := remote.WriteIndex(ref(t, r, "acme/edge/web:multi"), idx, opts(r)...); err != nil {
		t.Fatal(err)
	}
	gone, _ := random.Image(256, 1)
	gd := push(t, r, "acme/edge/gone", gone)
	if err := remote.Delete(ref(t, r, "acme/edge/gone@"+gd.String()), opts(r)...); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	r = registrytest.EmbeddedAt(t, dir)
	id, _ := idx.Digest()
	got, err := r.Resolve(t.Context(), "acme/edge/web", id.String(), "arm64")
	if err != nil {
		t.Fatalf("Resolve after restart: %v", err)
	}
	if got.Manifest != d {
		t.Errorf("index child = %s, want %s", got.Manifest, d)
	}
	if _, err := remote.Image(ref(t, r, "acme/edge/web:latest"), opts(r)...); err != nil {
		t.Errorf("tag latest after restart: %v", err)
	}
	if _, err := r.Resolve(t.Context(), "acme/edge/gone", gd.String(), "amd64"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("deleted manifest after restart: %v, want ErrNotFound", err)
	}
}

func TestPlatform(t *testing.T) {
	for arch, want := range map[string]string{"amd64": "linux/amd64", "arm64": "linux/arm64", "armv7": "linux/arm/v7",
		"armv6": "linux/arm/v6", "i386": "linux/386", "riscv64": "linux/riscv64"} {
		p, ok := registry.Platform(arch)
		if !ok || p.String() != want {
			t.Errorf("Platform(%s) = %s %v, want %s", arch, p.String(), ok, want)
		}
	}
	if _, ok := registry.Platform("mips"); ok {
		t.Error("Platform(mips) ok")
	}
}

func TestRoute(t *testing.T) {
	for _, c := range []struct{ path, repo, kind, rest string }{
		{"/v2/a/b/c/manifests/latest", "a/b/c", "manifests", "latest"},
		{"/v2/a/b/c/blobs/sha256:00", "a/b/c", "blobs", "sha256:00"},
		{"/v2/a/b/c/blobs/uploads/", "a/b/c", "blobs", "uploads/"},
		{"/v2/a/b/c/blobs/uploads/xyz", "a/b/c", "blobs", "uploads/xyz"},
		{"/v2/a/blobs/c/tags/list", "a/blobs/c", "tags", "list"},
		{"/v2/a/manifests/manifests/x", "a/manifests", "manifests", "x"},
		{"/v2/", "", "", ""},
		{"/v2/_catalog", "", "", ""},
		{"/v2/A/b/manifests/x", "", "", ""},
		{"/v2/a/../b/manifests/x", "", "", ""},
	} {
		repo, kind, rest, ok := registry.Route(c.path)
		if repo != c.repo || kind != c.kind || rest != c.rest || ok != (c.repo != "") {
			t.Errorf("Route(%s) = %q %q %q %v", c.path, repo, kind, rest, ok)
		}
	}
}
