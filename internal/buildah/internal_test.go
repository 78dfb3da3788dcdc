package buildah

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestBuildArgsKeepSecretsOffTheCommandLine(t *testing.T) {
	const secret, password = "top-secret-value", "registry-password"
	dir := t.TempDir()
	s := Storage{Root: filepath.Join(dir, "root"), RunRoot: filepath.Join(dir, "run")}
	auth := []byte(`{"auths":{"r.example":{"auth":"` + password + `"}}}`)
	ws, err := prepare(filepath.Join(dir, "work"), s, auth, []string{"127.0.0.1:5000", "[::1]:5001"})
	if err != nil {
		t.Fatal(err)
	}
	secretArgs, err := ws.writeSecrets(map[string]string{"tok": secret, "npm.rc": "other-" + secret})
	if err != nil {
		t.Fatal(err)
	}
	o := BuildOptions{
		Storage: s, WorkDir: ws.dir, Context: "/ctx", Dockerfile: "sub/Dockerfile", Platform: "armv7",
		Target: "prod", Args: map[string]string{"B": "2", "A": "1"}, Labels: map[string]string{"l": "v"},
		Tag: "localhost/app:1", Auth: auth, Layers: true,
	}
	p, _ := PlatformOf(o.Platform)
	args := append(ws.globalArgs(), buildArgs(o, p, ws, "/iid", secretArgs)...)
	args = append(args, ws.env()...)
	line := strings.Join(args, " ")
	for _, bad := range []string{secret, password} {
		if strings.Contains(line, bad) {
			t.Errorf("the command line or environment holds %q: %s", bad, line)
		}
	}
	for _, want := range []string{
		"--root " + s.Root, "--runroot " + s.RunRoot, "--storage-driver vfs",
		"build --isolation chroot --format oci --platform linux/arm/v7 --pull=missing",
		"--authfile " + ws.authFile, "--file /ctx/sub/Dockerfile", "--layers --force-rm", "--target prod",
		"--build-arg A=1 --build-arg B=2", "--label l=v",
		"--secret id=npm.rc,src=" + filepath.Join(ws.dir, "secrets", "npm.rc") +
			" --secret id=tok,src=" + filepath.Join(ws.dir, "secrets", "tok"),
		"--tag localhost/app:1 /ctx",
		"CONTAINERS_REGISTRIES_CONF=" + ws.regConf, "HOME=" + ws.dir + "/home",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("no %q in %s", want, line)
		}
	}

	// Only we may read what holds credentials.
	err = filepath.WalkDir(ws.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if perm := info.Mode().Perm(); perm&0o077 != 0 {
			t.Errorf("%s has mode %v", path, perm)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(ws.dir, "secrets", "tok"))
	if err != nil || string(b) != secret {
		t.Errorf("secret file: %q, %v", b, err)
	}
	conf, _ := os.ReadFile(ws.regConf)
	for _, want := range []string{"unqualified-search-registries = []", `location = "127.0.0.1:5000"`, `location = "[::1]:5001"`} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("registries.conf has no %q:\n%s", want, conf)
		}
	}
}

func TestPrepareRejects(t *testing.T) {
	s := Storage{Root: "/r", RunRoot: "/rr"}
	for _, h := range []string{"", "a\"b", "host\n[[registry]]", "http://host", "host/path"} {
		if _, err := prepare(t.TempDir(), s, nil, []string{h}); err == nil {
			t.Errorf("insecure host %q accepted", h)
		}
	}
	ws, err := prepare(t.TempDir(), s, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", "a,src=/etc/shadow", "../x", "a/b", ".hidden"} {
		if _, err := ws.writeSecrets(map[string]string{id: "v"}); err == nil {
			t.Errorf("secret id %q accepted", id)
		}
	}
}

func TestReadLinesSplitsLongLines(t *testing.T) {
	long := strings.Repeat("x", 2*MaxLine+10)
	var got []string
	readLines(strings.NewReader("a\r\n\n"+long+"\nlast"), func(s string) { got = append(got, s) })
	want := []string{"a", "", long[:MaxLine], long[MaxLine : 2*MaxLine], long[2*MaxLine:], "last"}
	if !slices.Equal(got, want) {
		t.Errorf("got %d lines %.40q, want %d", len(got), got, len(want))
	}
}

func TestRing(t *testing.T) {
	r := newRing(3)
	if got := r.lines(); len(got) != 0 {
		t.Errorf("empty ring: %q", got)
	}
	for _, s := range []string{"1", "2"} {
		r.add(s)
	}
	if got := r.lines(); !slices.Equal(got, []string{"1", "2"}) {
		t.Errorf("got %q", got)
	}
	for _, s := range []string{"3", "4", "5"} {
		r.add(s)
	}
	if got := r.lines(); !slices.Equal(got, []string{"3", "4", "5"}) {
		t.Errorf("got %q", got)
	}
}

func TestPlatforms(t *testing.T) {
	want := map[string]string{
		"amd64": "linux/amd64", "arm64": "linux/arm64", "armv7": "linux/arm/v7",
		"armv6": "linux/arm/v6", "i386": "linux/386", "riscv64": "linux/riscv64",
	}
	for _, a := range Architectures {
		p, err := PlatformOf(a)
		if err != nil || p.String() != want[a] {
			t.Errorf("PlatformOf(%q) = %v, %v; want %s", a, p, err, want[a])
		}
	}
	if _, err := PlatformOf("mips"); err == nil {
		t.Error("mips accepted")
	}
}

func TestNativeArchitectures(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := nativeArchitectures("amd64", filepath.Join(dir, "none")); !slices.Equal(got, []string{"amd64"}) {
		t.Errorf("no binfmt_misc: %q", got)
	}
	write("qemu-aarch64", "enabled\ninterpreter /usr/bin/qemu-aarch64-static\n")
	write("qemu-arm", "enabled\ninterpreter /usr/bin/qemu-arm-static\n")
	write("qemu-riscv64", "disabled\ninterpreter /usr/bin/qemu-riscv64-static\n")
	write("status", "disabled\n")
	if got := nativeArchitectures("amd64", dir); !slices.Equal(got, []string{"amd64"}) {
		t.Errorf("binfmt_misc off: %q", got)
	}
	write("status", "enabled\n")
	if got := nativeArchitectures("amd64", dir); !slices.Equal(got, []string{"amd64", "arm64", "armv6", "armv7"}) {
		t.Errorf("qemu for arm64 and arm: %q", got)
	}
	if got := NativeArchitectures(); !slices.Contains(got, HostArchitecture()) {
		t.Errorf("NativeArchitectures() = %q, without the host's %q", got, HostArchitecture())
	}
}
