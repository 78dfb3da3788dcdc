package registryproxy_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/flock-io/flock-api/internal/registry/registrytest"
)

const skopeo = "/usr/bin/skopeo"

// runSkopeo runs skopeo with its state in a temporary home; it returns the
// combined output and the error of a failed run.
func runSkopeo(t *testing.T, args ...string) (string, error) {
	t.Helper()
	home := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, skopeo, append([]string{"--insecure-policy"}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_RUNTIME_DIR="+home, "TMPDIR="+home,
		"REGISTRY_AUTH_FILE="+filepath.Join(home, "auth.json"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ociLayout writes an image as an OCI layout directory with tag v1.
func ociLayout(t *testing.T) (string, v1.Image) {
	t.Helper()
	dir := t.TempDir()
	// OCI media types throughout: skopeo's layout reader looks only at
	// OCI manifests.
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for range 3 {
		l, err := random.Layer(64<<10, types.OCILayer)
		must(t, err)
		img, err = mutate.AppendLayers(img, l)
		must(t, err)
	}
	p, err := layout.Write(dir, empty.Index)
	must(t, err)
	must(t, p.AppendImage(img, layout.WithAnnotations(map[string]string{"org.opencontainers.image.ref.name": "v1"})))
	return dir, img
}

// TestSkopeo: skopeo copies an image into the proxy with an API key and out
// of it with a device's credentials, and is refused another fleet's image.
func TestSkopeo(t *testing.T) {
	if _, err := os.Stat(skopeo); err != nil {
		t.Skipf("%s is missing (scripts/services.sh registry installs it): %v", skopeo, err)
	}
	for _, up := range registrytest.Upstreams() {
		t.Run(up.Name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t, newEnv(t, up.Open(t)))
			src, _ := ociLayout(t)
			web := w.edge.repo("web")
			digestFile := filepath.Join(t.TempDir(), "digest")
			if out, err := runSkopeo(t, "copy", "--dest-tls-verify=false", "--dest-creds", "ci:"+w.devKey,
				"--digestfile", digestFile, "oci:"+src+":v1", "docker://"+w.host+"/"+web+":v1"); err != nil {
				t.Fatalf("skopeo copy in: %v\n%s", err, out)
			}
			raw, err := os.ReadFile(digestFile)
			must(t, err)
			d, err := v1.NewHash(strings.TrimSpace(string(raw)))
			must(t, err)

			// Another fleet's image, which the device's releases never name.
			otherSrc, _ := ociLayout(t)
			otherFile := filepath.Join(t.TempDir(), "digest")
			if out, err := runSkopeo(t, "copy", "--dest-tls-verify=false", "--dest-creds", "ci:"+w.devKey,
				"--digestfile", otherFile, "oci:"+otherSrc+":v1", "docker://"+w.host+"/"+w.other.repo("web")+":v1"); err != nil {
				t.Fatalf("skopeo copy in (other fleet): %v\n%s", err, out)
			}
			raw, err = os.ReadFile(otherFile)
			must(t, err)
			otherD := strings.TrimSpace(string(raw))

			w.release(w.edge, web+":v1", d)
			creds := w.dev.id.String() + ":" + w.dev.token
			dst := t.TempDir()
			if out, err := runSkopeo(t, "copy", "--src-tls-verify=false", "--src-creds", creds,
				"docker://"+w.host+"/"+web+"@"+d.String(), "oci:"+dst+":out"); err != nil {
				t.Fatalf("skopeo copy out as the device: %v\n%s", err, out)
			}
			p, err := layout.FromPath(dst)
			must(t, err)
			idx, err := p.ImageIndex()
			must(t, err)
			im, err := idx.IndexManifest()
			must(t, err)
			if len(im.Manifests) != 1 || im.Manifests[0].Digest != d {
				t.Errorf("copied out %+v, want %s", im.Manifests, d)
			}

			out, err := runSkopeo(t, "copy", "--src-tls-verify=false", "--src-creds", creds,
				"docker://"+w.host+"/"+w.other.repo("web")+"@"+otherD, "oci:"+t.TempDir()+":out")
			if err == nil || !strings.Contains(strings.ToLower(out), "denied") {
				t.Errorf("skopeo copy of another fleet's image as the device: %v\n%s", err, out)
			}
			out, err = runSkopeo(t, "copy", "--src-tls-verify=false", "--src-creds", creds,
				"docker://"+w.host+"/"+web+":v1", "oci:"+t.TempDir()+":out")
			if err == nil {
				t.Errorf("skopeo copy by tag as the device succeeded\n%s", out)
			}
		})
	}
}
