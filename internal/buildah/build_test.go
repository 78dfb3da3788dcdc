package buildah_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/flock-io/flock-api/internal/buildah"
	"github.com/flock-io/flock-api/internal/buildah/buildahtest"
	"github.com/flock-io/flock-api/internal/testutil"
)

// fixture is what one test builds with: its own buildah storage, registry
// and work dir, so tests and copies of the test binary share nothing.
type fixture struct {
	e       *buildah.Engine
	host    string
	storage buildah.Storage
	workDir string
	out     *lines
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	e := buildahtest.Require(t)
	return &fixture{
		e:       e,
		host:    buildahtest.Registry(t),
		storage: buildahtest.Storage(t, e),
		workDir: t.TempDir(),
		out:     &lines{},
	}
}

// context writes files (name → content) to a new build context directory.
func (f *fixture) context(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func (f *fixture) options(dir, arch string) buildah.BuildOptions {
	return buildah.BuildOptions{
		Storage:  f.storage,
		WorkDir:  f.workDir,
		Context:  dir,
		Platform: arch,
		Insecure: []string{f.host},
		Output:   f.out.add,
	}
}

func (f *fixture) push(t *testing.T, image, repo string) (string, v1.Image) {
	t.Helper()
	ref := f.host + "/" + repo
	digest, err := f.e.Push(context.Background(), buildah.PushOptions{
		Storage:  f.storage,
		WorkDir:  f.workDir,
		Image:    image,
		Dest:     "docker://" + ref,
		Insecure: []string{f.host},
		Output:   f.out.add,
	})
	if err != nil {
		t.Fatalf("push: %v\n%s", err, f.out)
	}
	img := buildahtest.Pull(t, ref)
	got, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != digest {
		t.Errorf("Push returned %s, the registry has %s", digest, got)
	}
	return digest, img
}

// lines collects a build's output.
type lines struct {
	mu sync.Mutex
	l  []string
}

func (l *lines) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.l = append(l.l, s)
}

func (l *lines) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, x := range l.l {
		if strings.Contains(x, s) {
			return true
		}
	}
	return false
}

func (l *lines) hasLine(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, x := range l.l {
		if x == s {
			return true
		}
	}
	return false
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.l, "\n")
}

// files reads the regular files of img's flattened file system.
func files(t *testing.T, img v1.Image) map[string]string {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	out := map[string]string{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read image: %v", err)
		}
		if h.Typeflag != tar.TypeReg || h.Name == "bin/busybox" {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read image: %v", err)
		}
		out[strings.TrimPrefix(h.Name, "/")] = string(b)
	}
}

func TestBuildAndPush(t *testing.T) {
	host := buildah.HostArchitecture()
	tests := []struct {
		name       string
		arch       string
		dockerfile string // "{{base}}" is the busybox base for arch
		target     string
		args       map[string]string
		labels     map[string]string
		files      map[string]string // that must be in the image
		output     string            // a line buildah prints
	}{{
		name:       "run",
		arch:       host,
		dockerfile: "FROM {{base}}\nRUN echo hi > /hello && cat /hello\n",
		files:      map[string]string{"hello": "hi\n"},
		output:     "hi",
	}, {
		name:       "copy from scratch for arm64",
		arch:       "arm64",
		dockerfile: "FROM scratch\nCOPY app.txt /app.txt\n",
		files:      map[string]string{"app.txt": "app\n"},
	}, {
		name:       "copy onto a foreign base for armv7",
		arch:       "armv7",
		dockerfile: "FROM {{base}}\nCOPY app.txt /srv/app.txt\nCMD [\"/bin/cat\", \"/srv/app.txt\"]\n",
		files:      map[string]string{"srv/app.txt": "app\n"},
	}, {
		name: "target and build args",
		arch: host,
		dockerfile: "FROM {{base}} AS one\nARG MSG=default\nRUN echo \"$MSG\" > /msg\n" +
			"FROM {{base}} AS two\nRUN echo two > /msg\n",
		target: "one",
		args:   map[string]string{"MSG": "from an arg"},
		labels: map[string]string{"io.flock.service": "web"},
		files:  map[string]string{"msg": "from an arg\n"},
		output: "STEP 3/3: RUN echo \"$MSG\" > /msg",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			base := buildahtest.PushBusybox(t, f.host, "base/busybox", tt.arch)
			dir := f.context(t, map[string]string{
				"Dockerfile": strings.ReplaceAll(tt.dockerfile, "{{base}}", base),
				"app.txt":    "app\n",
			})
			o := f.options(dir, tt.arch)
			o.Target, o.Args, o.Labels = tt.target, tt.args, tt.labels
			o.Tag = "localhost/flock/app:build"
			res, err := f.e.Build(context.Background(), o)
			if err != nil {
				t.Fatalf("build: %v\n%s", err, f.out)
			}
			if !strings.HasPrefix(res.ImageID, "sha256:") && len(res.ImageID) != 64 {
				t.Errorf("image ID %q", res.ImageID)
			}
			if res.Steps != strings.Count(f.out.String(), "STEP ") || res.Steps == 0 {
				t.Errorf("%d steps, output:\n%s", res.Steps, f.out)
			}
			if tt.output != "" && !f.out.has(tt.output) {
				t.Errorf("output has no %q:\n%s", tt.output, f.out)
			}

			_, img := f.push(t, o.Tag, "org/app:v1")
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			want, _ := buildah.PlatformOf(tt.arch)
			if got := (buildah.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant}); got != want {
				t.Errorf("image platform %s, want %s", got, want)
			}
			for k, v := range tt.labels {
				if cf.Config.Labels[k] != v {
					t.Errorf("label %s = %q, want %q", k, cf.Config.Labels[k], v)
				}
			}
			got := files(t, img)
			for name, body := range tt.files {
				if got[name] != body {
					t.Errorf("%s in the image is %q, want %q (files: %v)", name, got[name], body, keys(got))
				}
			}
		})
	}
}

func keys(m map[string]string) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

func TestBuildFails(t *testing.T) {
	tests := []struct {
		name       string
		dockerfile string
		step       string
		message    string
	}{{
		name:       "run",
		dockerfile: "FROM {{base}}\nRUN true\nRUN echo failing && false\nRUN true\n",
		step:       "STEP 3/4: RUN echo failing && false",
		message:    `building at STEP "RUN echo failing && false"`,
	}, {
		name:       "missing base",
		dockerfile: "FROM {{host}}/base/none:1\nRUN true\n",
		step:       "STEP 1/2: FROM {{host}}/base/none:1",
		message:    "base/none",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			base := buildahtest.PushBusybox(t, f.host, "base/busybox", buildah.HostArchitecture())
			r := strings.NewReplacer("{{base}}", base, "{{host}}", f.host)
			dir := f.context(t, map[string]string{"Dockerfile": r.Replace(tt.dockerfile)})
			_, err := f.e.Build(context.Background(), f.options(dir, buildah.HostArchitecture()))
			var be *buildah.BuildError
			if !errors.As(err, &be) {
				t.Fatalf("build: %v, want a *BuildError\n%s", err, f.out)
			}
			if be.Step != r.Replace(tt.step) {
				t.Errorf("step %q, want %q", be.Step, r.Replace(tt.step))
			}
			if !strings.Contains(be.Message, r.Replace(tt.message)) {
				t.Errorf("message %q, want it to say %q", be.Message, r.Replace(tt.message))
			}
			if be.ExitCode == 0 || len(be.Tail) == 0 || len(be.Tail) > buildah.TailLines {
				t.Errorf("exit code %d, tail %q", be.ExitCode, be.Tail)
			}
			if last := be.Tail[len(be.Tail)-1]; !strings.HasPrefix(last, "Error: ") {
				t.Errorf("tail ends with %q, want buildah's error", last)
			}
			t.Logf("%v", err)
		})
	}
}

func TestBuildCancel(t *testing.T) {
	f := newFixture(t)
	base := buildahtest.PushBusybox(t, f.host, "base/busybox", buildah.HostArchitecture())
	// The RUN's processes have the build args in their environment: how
	// this test finds them among other tests' and other copies'.
	mark := "MARK=" + randomHex(t)
	dir := f.context(t, map[string]string{"Dockerfile": "FROM " + base + "\nARG MARK\nRUN sleep 600 && echo slept\n"})
	o := f.options(dir, buildah.HostArchitecture())
	o.Args = map[string]string{"MARK": strings.TrimPrefix(mark, "MARK=")}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := f.e.Build(ctx, o)
		done <- err
	}()
	testutil.Eventually(t, "the RUN step's sleep to start", func() error {
		for _, p := range processes(mark, f.storage.Root) {
			if p.comm == "sleep" {
				return nil
			}
		}
		return errors.New("no sleep")
	})
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("build: %v, want context.Canceled\n%s", err, f.out)
	}
	if f.out.hasLine("slept") {
		t.Errorf("the RUN step finished:\n%s", f.out)
	}
	testutil.Eventually(t, "no process of the build left", func() error {
		if ps := processes(mark, f.storage.Root); len(ps) > 0 {
			return fmt.Errorf("left: %v", ps)
		}
		return nil
	})
	// The cancelled build's working container is clean-up for Wipe.
	if err := f.e.Wipe(context.Background(), f.storage); err != nil {
		t.Error(err)
	}
}

type process struct {
	pid  int
	comm string
}

// processes are those with mark in their environment or root in their
// command line; zombies have neither, and are gone for our purposes.
func processes(mark, root string) []process {
	entries, _ := os.ReadDir("/proc")
	var out []process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		environ, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if !bytes.Contains(environ, []byte(mark+"\x00")) && !bytes.Contains(cmdline, []byte(root)) {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		out = append(out, process{pid, strings.TrimSpace(string(comm))})
	}
	return out
}

func randomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func TestBuildSecret(t *testing.T) {
	f := newFixture(t)
	base := buildahtest.PushBusybox(t, f.host, "base/busybox", buildah.HostArchitecture())
	secret := "s3cret-" + randomHex(t)
	sum := sha256.Sum256([]byte(secret))
	dir := f.context(t, map[string]string{"Dockerfile": "FROM " + base + "\n" +
		"RUN --mount=type=secret,id=tok sha256sum /run/secrets/tok | cut -c1-64 > /tok.sha256 || " +
		"(cat /run/secrets/tok | sha256sum > /tok.sha256)\n"})
	o := f.options(dir, buildah.HostArchitecture())
	o.Secrets = map[string]string{"tok": secret}
	o.Layers = true // intermediate images must not keep it either
	res, err := f.e.Build(context.Background(), o)
	if err != nil {
		t.Fatalf("build: %v\n%s", err, f.out)
	}
	_, img := f.push(t, res.ImageID, "org/secret:v1")
	got := files(t, img)["tok.sha256"]
	if !strings.HasPrefix(got, hex.EncodeToString(sum[:])) {
		t.Fatalf("the RUN step saw a secret hashing to %q, want %x", got, sum)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("layer %d holds the secret", i)
		}
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(cfg, []byte(secret)) {
		t.Errorf("the image config holds the secret: %s", cfg)
	}
	if f.out.has(secret) {
		t.Errorf("the output holds the secret")
	}
}

func TestBuildLayerCache(t *testing.T) {
	f := newFixture(t)
	base := buildahtest.PushBusybox(t, f.host, "base/busybox", buildah.HostArchitecture())
	dir := f.context(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN echo one > /one\nCOPY app.txt /app.txt\nRUN cat /app.txt > /two\n",
		"app.txt":    "app\n",
	})
	o := f.options(dir, buildah.HostArchitecture())
	o.Layers = true
	first, err := f.e.Build(context.Background(), o)
	if err != nil {
		t.Fatalf("first build: %v\n%s", err, f.out)
	}
	if first.CachedSteps != 0 || f.out.has("Using cache") {
		t.Fatalf("the first build used a cache:\n%s", f.out)
	}
	second, err := f.e.Build(context.Background(), o)
	if err != nil {
		t.Fatalf("second build: %v\n%s", err, f.out)
	}
	if second.CachedSteps == 0 || !f.out.has("--> Using cache") {
		t.Errorf("the second build used no cache (%d cached steps):\n%s", second.CachedSteps, f.out)
	}
	// PullMissing: the base image in Storage is used again as it is.
	if n := strings.Count(f.out.String(), "Trying to pull"); n != 1 {
		t.Errorf("%d pulls of the base over two builds, want 1:\n%s", n, f.out)
	}
}

func TestVersion(t *testing.T) {
	e := buildahtest.Require(t)
	v, err := e.Version(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if v == "" || !strings.Contains(v, ".") {
		t.Errorf("version %q", v)
	}
}

// The base image comes from, and the result goes to, a registry that wants
// credentials: Auth is what buildah logs in with, both ways.
func TestBuildWithCredentials(t *testing.T) {
	f := newFixture(t)
	password := "pw-" + randomHex(t)
	host := buildahtest.RegistryWithAuth(t, "builder", password)
	base := buildahtest.PushBusybox(t, host, "base/busybox", buildah.HostArchitecture())
	dir := f.context(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo built > /built\n"})
	auth := buildahtest.AuthFile(t, host, "builder", password)

	o := f.options(dir, buildah.HostArchitecture())
	o.Insecure = []string{host}
	res, err := f.e.Build(context.Background(), o)
	var be *buildah.BuildError
	if !errors.As(err, &be) || !strings.Contains(be.Message, "unauthorized") {
		t.Fatalf("build without credentials: %v, want a failure to pull the base\n%s", err, f.out)
	}

	o.Auth = auth
	if res, err = f.e.Build(context.Background(), o); err != nil {
		t.Fatalf("build: %v\n%s", err, f.out)
	}
	p := buildah.PushOptions{
		Storage: f.storage, WorkDir: f.workDir, Image: res.ImageID,
		Dest: "docker://" + host + "/org/app:v1", Insecure: []string{host}, Output: f.out.add,
	}
	if _, err := f.e.Push(context.Background(), p); err == nil {
		t.Fatal("push without credentials succeeded")
	}
	p.Auth = auth
	digest, err := f.e.Push(context.Background(), p)
	if err != nil {
		t.Fatalf("push: %v\n%s", err, f.out)
	}
	img := buildahtest.Pull(t, host+"/org/app:v1")
	if d, _ := img.Digest(); d.String() != digest {
		t.Errorf("pushed %s, the registry has %s", digest, d)
	}
	if got := files(t, img)["built"]; got != "built\n" {
		t.Errorf("/built is %q", got)
	}
	if f.out.has(password) {
		t.Error("the output holds the password")
	}
}
