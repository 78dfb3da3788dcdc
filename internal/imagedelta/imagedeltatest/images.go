// Package imagedeltatest builds real image pairs for the tests of image
// deltas: two versions of a small image whose application layer holds a Go
// program compiled at two source versions, over a shared base layer of
// text files, and a layer only the second version has.
package imagedeltatest

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/flock-io/flock-api/internal/registry"
)

// epoch is every file's mtime, so equal layers are equal bytes.
var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// Pair is two versions of one image. A has layers [base, app v1]; B has
// [base, app v2, data]: base is present in both, app changed (a recompiled
// Go binary and an edited text file), data is new.
type Pair struct {
	A, B v1.Image
}

// Program versions: v2 adds a flag and a function, as a real release might.
const progV1 = `package main

import (
	"fmt"
	"os"
	"strings"
)

func main() {
	name := "world"
	if len(os.Args) > 1 {
		name = strings.Join(os.Args[1:], " ")
	}
	fmt.Printf("hello, %s (v1)\n", name)
}
`

const progV2 = `package main

import (
	"fmt"
	"os"
	"strings"
)

// greet is new in v2.
func greet(name string) string {
	if strings.HasPrefix(name, "-") {
		return "hello, anonymous (v2)"
	}
	return fmt.Sprintf("hello, %s (v2)", strings.TrimSpace(name))
}

func main() {
	name := "world"
	if len(os.Args) > 1 {
		name = strings.Join(os.Args[1:], " ")
	}
	fmt.Println(greet(name))
}
`

// BuildPair compiles the program at both versions and builds the images for
// GOARCH (as the image config's architecture, in OCI spelling).
func BuildPair(t testing.TB) Pair {
	t.Helper()
	dir := t.TempDir()
	bin1 := compile(t, filepath.Join(dir, "v1"), progV1)
	bin2 := compile(t, filepath.Join(dir, "v2"), progV2)

	base := map[string][]byte{}
	// Real text: some of the standard library's sources.
	for _, name := range []string{"fmt/print.go", "fmt/format.go", "strings/strings.go", "os/file.go"} {
		b, err := os.ReadFile(filepath.Join(runtime.GOROOT(), "src", name))
		if err != nil {
			t.Fatalf("read GOROOT source for the base layer: %v", err)
		}
		base["usr/share/src/"+name] = b
	}
	base["etc/os-release"] = []byte("NAME=\"Flock test\"\nID=flock\nVERSION_ID=1\n")
	baseLayer := Layer(t, base)

	appV1 := Layer(t, map[string][]byte{
		"app/hello":       bin1,
		"app/config.toml": []byte("[server]\nport = 8080\nlog = \"info\"\n"),
		"app/README":      []byte("The hello service.\n"),
	})
	appV2 := Layer(t, map[string][]byte{
		"app/hello":       bin2,
		"app/config.toml": []byte("[server]\nport = 8080\nlog = \"debug\"\nloud = true\n"),
		"app/README":      []byte("The hello service.\n"),
	})
	data := Layer(t, map[string][]byte{
		"app/data/greetings.txt": bytes.Repeat([]byte("hello hallo hola bonjour ciao\n"), 200),
	})
	return Pair{A: Image(t, baseLayer, appV1), B: Image(t, baseLayer, appV2, data)}
}

// TextPair is a Pair without the compiled program: the application layer
// holds a large source file that v2 edits in a few places. Its deltas are
// computed in a fraction of the time (tests under -race on a loaded machine
// that only need some real delta).
func TextPair(t testing.TB) Pair {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(runtime.GOROOT(), "src", "net", "http", "server.go"))
	if err != nil {
		t.Fatalf("read GOROOT source for the app layer: %v", err)
	}
	edited := bytes.ReplaceAll(src, []byte("ResponseWriter"), []byte("ResponseWriter2"))
	edited = append(edited, "\n// v2\nfunc Extra() int { return 2 }\n"...)
	base := Layer(t, map[string][]byte{"etc/os-release": []byte("NAME=\"Flock test\"\nID=flock\n")})
	appV1 := Layer(t, map[string][]byte{"app/server.go": src, "app/config.toml": []byte("log = \"info\"\n")})
	appV2 := Layer(t, map[string][]byte{"app/server.go": edited, "app/config.toml": []byte("log = \"debug\"\n")})
	data := Layer(t, map[string][]byte{"app/data/greetings.txt": bytes.Repeat([]byte("hello hallo hola\n"), 100)})
	return Pair{A: Image(t, base, appV1), B: Image(t, base, appV2, data)}
}

func compile(t testing.TB, dir, src string) []byte {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"main.go": src, "go.mod": "module example.com/hello\n\ngo 1.22\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", "hello", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build of the test program: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Tar makes an uncompressed layer tar of files (path → content), with
// their parent directories, in path order, all stamped epoch.
func Tar(t testing.TB, files map[string][]byte) []byte {
	t.Helper()
	var names []string
	dirs := map[string]bool{}
	for name := range files {
		names = append(names, name)
		for d := filepath.Dir(name); d != "." && d != "/"; d = filepath.Dir(d) {
			dirs[d+"/"] = true
		}
	}
	for d := range dirs {
		names = append(names, d)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range names {
		h := &tar.Header{Name: name, ModTime: epoch, Uid: 0, Gid: 0, Format: tar.FormatPAX}
		if body, ok := files[name]; ok {
			h.Typeflag, h.Mode, h.Size = tar.TypeReg, 0o755, int64(len(body))
		} else {
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if body, ok := files[name]; ok {
			if _, err := tw.Write(body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Layer is a gzip-compressed image layer of files.
func Layer(t testing.TB, files map[string][]byte) v1.Layer {
	t.Helper()
	return RawLayer(t, Tar(t, files))
}

// RawLayer is a gzip-compressed image layer whose uncompressed content is
// b (a tar or not: a test may want a layer that is not one).
func RawLayer(t testing.TB, b []byte) v1.Layer {
	t.Helper()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithCompressedCaching)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Arch is the image config's architecture of the images built here: the
// Go spelling, which for amd64 and arm64 is also Flock's.
var Arch = runtime.GOARCH

// Image is a linux image of layers.
func Image(t testing.TB, layers ...v1.Layer) v1.Image {
	t.Helper()
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{Architecture: Arch, OS: "linux",
		Config: v1.Config{Entrypoint: []string{"/app/hello"}}, RootFS: v1.RootFS{Type: "layers"}})
	if err != nil {
		t.Fatal(err)
	}
	img, err = mutate.AppendLayers(img, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// Resolved describes img as registry.Resolve would for repo, without a
// registry.
func Resolved(t testing.TB, repo string, img v1.Image) registry.Image {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	out := registry.Image{Repo: repo, Digest: d.String(), Manifest: d}
	for _, l := range ls {
		var rl registry.Layer
		var err error
		if rl.Digest, err = l.Digest(); err == nil {
			if rl.DiffID, err = l.DiffID(); err == nil {
				if rl.Size, err = l.Size(); err == nil {
					rl.MediaType, err = l.MediaType()
				}
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		out.Layers = append(out.Layers, rl)
		out.Size += rl.Size
	}
	return out
}

// Opener opens the layers of imgs by digest, whatever the repository.
func Opener(t testing.TB, imgs ...v1.Image) func(ctx context.Context, repo string, digest v1.Hash) (v1.Layer, error) {
	t.Helper()
	byDigest := map[v1.Hash]v1.Layer{}
	for _, img := range imgs {
		ls, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			d, err := l.Digest()
			if err != nil {
				t.Fatal(err)
			}
			byDigest[d] = l
		}
	}
	return func(ctx context.Context, repo string, digest v1.Hash) (v1.Layer, error) {
		l, ok := byDigest[digest]
		if !ok {
			return nil, fmt.Errorf("layer %s: %w", digest, registry.ErrNotFound)
		}
		return l, nil
	}
}

// Uncompressed reads each layer of img, uncompressed.
func Uncompressed(t testing.TB, img v1.Image) [][]byte {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, l := range ls {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// Push writes img to repo of r (tagged latest) and returns its digest.
func Push(t testing.TB, r *registry.Registry, repo string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(r.Base().Host+"/"+repo+":latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithTransport(r.Transport()), remote.WithAuth(authn.Anonymous)); err != nil {
		t.Fatalf("push %s: %v", repo, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}
