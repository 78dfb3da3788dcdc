// Package imagetest builds the image the way a release does (make image,
// pushing to a registry) and reads it back with go-containerregistry: what
// Kubernetes and operators rely on is checked on the artefact itself, not on
// the builder's intentions.
package imagetest

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Values the test links in and expects back from the labels and from the
// binary's --version: not the checkout's, so a label that silently fell
// back to a default could not pass.
const (
	wantVersion = "v0.0.0-imagetest"
	wantCommit  = "0123456789ab"
	wantSource  = "https://example.test/flock-api"
	wantCreated = "2024-05-06T07:08:09Z"
	binaryPath  = "usr/local/bin/flock-api"
)

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !strings.HasPrefix(string(mod), "module github.com/flock-io/flock-api\n") {
		t.Fatalf("%s is not the flock-api module root (go.mod: %v)", root, err)
	}
	return root
}

// makeImage runs `make image` into dir with the test's version and commit.
func makeImage(t *testing.T, root, dir string, vars ...string) string {
	t.Helper()
	args := append([]string{"-C", root, "--no-print-directory", "image",
		"IMAGE_DIR=" + dir,
		"IMAGE_PLATFORMS=linux/" + runtime.GOARCH,
		"VERSION=" + wantVersion,
		"COMMIT=" + wantCommit,
		"IMAGE_SOURCE=" + wantSource,
		"IMAGE_CREATED=" + wantCreated,
	}, vars...)
	cmd := exec.Command("make", args...)
	// This test usually runs under make test: the outer make's variables
	// (MAKEFLAGS) must not reach the inner one.
	cmd.Env = withoutVars(os.Environ(), "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "IMAGE")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	t.Logf("make image:\n%s", out)
	return string(out)
}

func withoutVars(env []string, names ...string) []string {
	var kept []string
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		kept = append(kept, kv)
	}
	return kept
}

// topIndex is the image index the layout's index.json names.
func topIndex(t *testing.T, dir string) (v1.ImageIndex, v1.Descriptor) {
	t.Helper()
	root, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("read OCI layout %s: %v", dir, err)
	}
	im, err := root.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("index.json lists %d entries, want the one image index", len(im.Manifests))
	}
	desc := im.Manifests[0]
	if desc.MediaType != types.OCIImageIndex {
		t.Fatalf("index.json entry is %s, want %s", desc.MediaType, types.OCIImageIndex)
	}
	idx, err := root.ImageIndex(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	return idx, desc
}

func TestImage(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatalf("make is needed to build the image as a release does: %v", err)
	}
	root := repoRoot(t)

	// A registry on loopback, so the push path (IMAGE=...) runs too.
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	pushRef := strings.TrimPrefix(reg.URL, "http://") + "/flock/flock-api:imagetest"

	dir := t.TempDir()
	out := makeImage(t, root, dir, "IMAGE="+pushRef)
	idx, desc := topIndex(t, filepath.Join(dir, "oci"))
	if got := desc.Annotations["org.opencontainers.image.ref.name"]; got != "imagetest" {
		t.Errorf("layout ref name %q, want the pushed tag imagetest", got)
	}
	if !strings.Contains(out, desc.Digest.String()) {
		t.Errorf("make image did not print the index digest %s", desc.Digest)
	}

	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("image index has %d manifests, want 1 (linux/%s)", len(im.Manifests), runtime.GOARCH)
	}
	md := im.Manifests[0]
	if md.Platform == nil || md.Platform.OS != "linux" || md.Platform.Architecture != runtime.GOARCH {
		t.Fatalf("manifest platform %+v, want linux/%s", md.Platform, runtime.GOARCH)
	}
	img, err := idx.Image(md.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type %s, want %s", mt, types.OCIManifestSchema1)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("config", func(t *testing.T) {
		checkConfig(t, cf)
		for _, anns := range []map[string]string{im.Annotations, md.Annotations} {
			if anns["org.opencontainers.image.version"] != wantVersion || anns["org.opencontainers.image.revision"] != wantCommit {
				t.Errorf("annotations %v lack version %s and revision %s", anns, wantVersion, wantCommit)
			}
		}
	})

	files := extract(t, img)
	t.Run("filesystem", func(t *testing.T) { checkFiles(t, files) })
	t.Run("binary", func(t *testing.T) { checkBinary(t, files[binaryPath]) })

	t.Run("pushed", func(t *testing.T) {
		ref, err := name.ParseReference(pushRef)
		if err != nil {
			t.Fatal(err)
		}
		got, err := remote.Index(ref)
		if err != nil {
			t.Fatalf("pull %s: %v", ref, err)
		}
		d, err := got.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if d != desc.Digest {
			t.Errorf("registry holds %s, layout holds %s", d, desc.Digest)
		}
	})

	t.Run("oci-archive", func(t *testing.T) {
		// The tarball is the same layout: unpack it and find the same index.
		un := t.TempDir()
		untar(t, filepath.Join(dir, "flock-api.tar"), un)
		_, d := topIndex(t, un)
		if d.Digest != desc.Digest {
			t.Errorf("flock-api.tar holds %s, the layout %s", d.Digest, desc.Digest)
		}
	})

	t.Run("reproducible", func(t *testing.T) {
		// The same commit, flags and time build the same digest (the
		// binary comes from the build cache the second time).
		again := t.TempDir()
		makeImage(t, root, again)
		_, d := topIndex(t, filepath.Join(again, "oci"))
		if d.Digest != desc.Digest {
			t.Errorf("second build %s, first %s: the image is not reproducible", d.Digest, desc.Digest)
		}
	})
}

func checkConfig(t *testing.T, cf *v1.ConfigFile) {
	c := cf.Config
	// Kubernetes' runAsNonRoot can only verify a numeric user: a name
	// makes the kubelet refuse the pod.
	uid, gid, ok := strings.Cut(c.User, ":")
	u, err := strconv.Atoi(uid)
	if err != nil || u == 0 {
		t.Errorf("User %q: want a numeric non-zero uid", c.User)
	}
	if ok {
		if _, err := strconv.Atoi(gid); err != nil {
			t.Errorf("User %q: group is not numeric", c.User)
		}
	}
	if len(c.Entrypoint) != 1 || c.Entrypoint[0] != "/"+binaryPath {
		t.Errorf("Entrypoint %q, want [/%s]", c.Entrypoint, binaryPath)
	}
	if len(c.Cmd) != 0 {
		t.Errorf("Cmd %q: want none, FLOCK_TARGET and args choose what runs", c.Cmd)
	}
	want := map[string]string{
		"org.opencontainers.image.version":  wantVersion,
		"org.opencontainers.image.revision": wantCommit,
		"org.opencontainers.image.source":   wantSource,
		"org.opencontainers.image.created":  wantCreated,
	}
	for k, v := range want {
		if got := c.Labels[k]; got != v {
			t.Errorf("label %s = %q, want %q", k, got, v)
		}
	}
	created, _ := time.Parse(time.RFC3339, wantCreated)
	if !cf.Created.Time.Equal(created) {
		t.Errorf("config created %s, want %s", cf.Created.Time, created)
	}
	for _, p := range []string{"8080/tcp", "1883/tcp"} {
		if _, ok := c.ExposedPorts[p]; !ok {
			t.Errorf("ExposedPorts %v lacks %s", c.ExposedPorts, p)
		}
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("config platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
	}
	if len(cf.RootFS.DiffIDs) != 2 || len(cf.History) != 2 {
		t.Errorf("%d layers, %d history entries: want the base layer and the binary's", len(cf.RootFS.DiffIDs), len(cf.History))
	}
}

type file struct {
	hdr  *tar.Header
	data []byte
}

// extract flattens the image's layers as a container runtime would.
func extract(t *testing.T, img v1.Image) map[string]file {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	files := map[string]file{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")] = file{hdr: h, data: data}
	}
	return files
}

func checkFiles(t *testing.T, files map[string]file) {
	bin, ok := files[binaryPath]
	if !ok {
		t.Fatalf("no %s in the image", binaryPath)
	}
	// The user that runs it cannot replace it.
	if bin.hdr.Uid != 0 || bin.hdr.Mode&0o022 != 0 || bin.hdr.Mode&0o111 == 0 {
		t.Errorf("%s: uid %d mode %o, want root-owned, executable, not group/world writable", binaryPath, bin.hdr.Uid, bin.hdr.Mode)
	}
	if !strings.Contains(string(files["etc/passwd"].data), "nonroot:x:65532:65532:") {
		t.Errorf("etc/passwd has no nonroot user 65532:\n%s", files["etc/passwd"].data)
	}
	if c := files["etc/ssl/certs/ca-certificates.crt"].data; !bytes.Contains(c, []byte("BEGIN CERTIFICATE")) {
		t.Errorf("etc/ssl/certs/ca-certificates.crt holds no certificate (%d bytes)", len(c))
	}
	if tmp, ok := files["tmp"]; !ok || tmp.hdr.Typeflag != tar.TypeDir || tmp.hdr.Mode&0o1777 != 0o1777 {
		t.Errorf("tmp: want a directory with mode 1777")
	}
	for p, f := range files {
		if f.hdr.Typeflag == tar.TypeReg && f.hdr.Mode&0o002 != 0 {
			t.Errorf("%s is world-writable", p)
		}
	}
}

func checkBinary(t *testing.T, f file) {
	if len(f.data) == 0 {
		t.Fatal("no binary to check")
	}
	p := filepath.Join(t.TempDir(), "flock-api")
	if err := os.WriteFile(p, f.data, 0o755); err != nil {
		t.Fatal(err)
	}
	// Statically linked: no program interpreter (ld.so) and no shared
	// libraries, so it runs on an image without libc.
	ef, err := elf.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	for _, prog := range ef.Progs {
		if prog.Type == elf.PT_INTERP {
			t.Errorf("the binary asks for a dynamic loader: not built with CGO_ENABLED=0")
		}
	}
	if libs, _ := ef.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary links %v", libs)
	}
	cmd := exec.Command(p, "--version")
	cmd.Env = []string{} // nothing from the test's environment decides the answer
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s --version: %v\n%s", binaryPath, err, out)
	}
	want := fmt.Sprintf("flock-api %s (commit %s, go", wantVersion, wantCommit)
	if !strings.HasPrefix(string(out), want) {
		t.Errorf("--version printed %q, want it to start with %q", out, want)
	}
}

func untar(t *testing.T, archive, dir string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if !strings.HasPrefix(p, dir+string(filepath.Separator)) {
			t.Fatalf("%s escapes the archive", h.Name)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, 0o755)
		case tar.TypeReg:
			var data []byte
			if data, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, data, fs.FileMode(0o644))
			}
		default:
			t.Fatalf("%s: unexpected entry type %c", h.Name, h.Typeflag)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}
