// Package buildahtest holds the fixtures tests of builder code share: a
// busybox base image made without buildah (nothing can be pulled from public
// registries here), an in-process registry to push it to, and a check that
// buildah is installed.
package buildahtest

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/flock-io/flock-api/internal/buildah"
)

// BusyboxBinary is Debian's busybox-static: a static binary runs in an image
// without any libraries next to it (scripts/services.sh builder-tools
// installs it).
const BusyboxBinary = "/bin/busybox"

// Applets get a /bin symlink to busybox in BusyboxImage: what Dockerfiles in
// tests RUN.
var Applets = []string{
	"sh", "echo", "cat", "true", "false", "ls", "mkdir", "sleep", "test", "[",
	"env", "touch", "rm", "cp", "mv", "grep", "wc", "head", "tail", "id",
	"printf", "sha256sum", "uname", "find", "chmod", "ln", "pwd", "whoami",
}

// Require fails t when buildah is missing. It does not skip: a skipped
// builder test would read as a passing one on a machine where nothing was
// tested.
func Require(t testing.TB) *buildah.Engine {
	t.Helper()
	e, err := buildah.New("")
	if err != nil {
		t.Fatalf("%v (scripts/services.sh builder-tools installs it)", err)
	}
	if _, err := os.Stat(BusyboxBinary); err != nil {
		t.Fatalf("busybox-static is missing: %v (scripts/services.sh builder-tools installs it)", err)
	}
	return e
}

// BusyboxImage is a one-layer image with BusyboxBinary and its applets in
// /bin, for the Flock architecture arch. The binary is the host's whatever
// arch says: images for a foreign arch only serve COPY-only builds.
func BusyboxImage(t testing.TB, arch string) v1.Image {
	t.Helper()
	platform, err := buildah.PlatformOf(arch)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(BusyboxBinary)
	if err != nil {
		t.Fatalf("busybox-static is missing: %v (scripts/services.sh builder-tools installs it)", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	// A fixed time keeps the layer's digest the same from run to run.
	mtime := time.Unix(0, 0)
	add := func(h *tar.Header, body []byte) {
		h.ModTime = mtime
		h.Format = tar.FormatPAX
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("busybox layer: %v", err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatalf("busybox layer: %v", err)
		}
	}
	for _, d := range []string{"bin/", "tmp/", "etc/", "root/"} {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		add(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: mode}, nil)
	}
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bin))}, bin)
	for _, a := range Applets {
		add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}, nil)
	}
	passwd := []byte("root:x:0:0:root:/root:/bin/sh\n")
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: int64(len(passwd))}, passwd)
	group := []byte("root:x:0:\n")
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/group", Mode: 0o644, Size: int64(len(group))}, group)
	if err := tw.Close(); err != nil {
		t.Fatalf("busybox layer: %v", err)
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		t.Fatalf("busybox layer: %v", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatalf("busybox image: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatalf("busybox image: %v", err)
	}
	cf = cf.DeepCopy()
	cf.OS = platform.OS
	cf.Architecture = platform.Architecture
	cf.Variant = platform.Variant
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.Cmd = []string{"/bin/sh"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatalf("busybox image: %v", err)
	}
	return img
}

// Registry starts an in-process registry over plain HTTP on 127.0.0.1 that
// lives until the test ends, and returns its host:port. Each test gets its
// own, so tests (and copies of the test binary) never see each other's
// images.
func Registry(t testing.TB) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// credentials are the users of the registries RegistryWithAuth started, by
// host, for Push and Pull.
var credentials sync.Map // host → *authn.Basic

// RegistryWithAuth is Registry behind HTTP basic authentication: only user
// with password may pull or push. Push and Pull here log in by themselves.
func RegistryWithAuth(t testing.TB, user, password string) string {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
			w.Header().Set("WWW-Authenticate", `Basic realm="buildahtest"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		reg.ServeHTTP(w, r)
	}))
	host := strings.TrimPrefix(srv.URL, "http://")
	credentials.Store(host, &authn.Basic{Username: user, Password: password})
	t.Cleanup(func() {
		srv.Close()
		credentials.Delete(host)
	})
	return host
}

// AuthFile is a containers-auth.json document with user's password for
// host, as BuildOptions.Auth and PushOptions.Auth take it.
func AuthFile(t testing.TB, host, user, password string) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"auths": map[string]any{
		host: map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + password))},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func remoteOptions(r name.Reference) []remote.Option {
	opts := []remote.Option{remote.WithContext(context.Background())}
	if c, ok := credentials.Load(r.Context().RegistryStr()); ok {
		opts = append(opts, remote.WithAuth(c.(*authn.Basic)))
	}
	return opts
}

// PushBusybox pushes BusyboxImage(arch) to host as repo:tag and returns
// the reference, e.g. "127.0.0.1:40123/base/busybox:amd64".
func PushBusybox(t testing.TB, host, repo, arch string) string {
	t.Helper()
	ref := fmt.Sprintf("%s/%s:%s", host, repo, arch)
	Push(t, ref, BusyboxImage(t, arch))
	return ref
}

// Push writes img to ref on a plain-HTTP registry.
func Push(t testing.TB, ref string, img v1.Image) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	if err := remote.Write(r, img, remoteOptions(r)...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

// Pull reads ref from a plain-HTTP registry.
func Pull(t testing.TB, ref string) v1.Image {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	img, err := remote.Image(r, remoteOptions(r)...)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	return img
}

// Storage is a fresh containers/storage location under t.TempDir, emptied
// with buildah when the test ends: vfs leaves directories t.TempDir's own
// clean-up cannot always remove.
func Storage(t testing.TB, e *buildah.Engine) buildah.Storage {
	t.Helper()
	dir := t.TempDir()
	s := buildah.Storage{Root: dir + "/root", RunRoot: dir + "/runroot"}
	// Registered after TempDir's clean-up, so it runs before it.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := e.Wipe(ctx, s); err != nil {
			t.Logf("wipe storage %s: %v", dir, err)
		}
		// Whatever buildah left, made writable so TempDir can delete it.
		_ = exec.Command("chmod", "-R", "u+rwX", dir).Run()
	})
	return s
}
