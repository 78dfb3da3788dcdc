package buildsrc

import (
	"archive/tar"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestExtractTree(t *testing.T) {
	src := writeTemp(t, gzipped(t, tarBytes(t,
		dir("./"),
		file("./docker-compose.yml", "services: {a: {build: app}}"),
		member{name: "./app", typ: tar.TypeDir, mode: 0o750},
		member{name: "./app/run.sh", typ: tar.TypeReg, body: "#!/bin/sh\necho hi\n", mode: 0o755},
		member{name: "./app/secret", typ: tar.TypeReg, body: "s", mode: 0o600},
		symlink("./app/start", "run.sh"),
		symlink("./current", "app"),
		member{name: "./app/again", typ: tar.TypeLink, link: "app/run.sh"},
		file("./deep/implicit/parent.txt", "p"),
		member{name: "./ro", typ: tar.TypeDir, mode: 0o555},
		file("./ro/inside", "i"),
	)))
	dest := t.TempDir()
	if err := Extract(context.Background(), src, dest); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(dest, "ro"), 0o755) })

	modes := map[string]fs.FileMode{
		"app":                      fs.ModeDir | 0o750,
		"app/run.sh":               0o755,
		"app/secret":               0o600,
		"app/again":                0o755,
		"docker-compose.yml":       0o644,
		"deep/implicit/parent.txt": 0o644,
		"ro":                       fs.ModeDir | 0o555,
		"ro/inside":                0o644,
		"app/start":                fs.ModeSymlink,
		"current":                  fs.ModeSymlink,
	}
	for name, want := range modes {
		fi, err := os.Lstat(filepath.Join(dest, name))
		if err != nil {
			t.Fatal(err)
		}
		got := fi.Mode()
		if got.Type() == fs.ModeSymlink {
			got = fs.ModeSymlink
		}
		if got != want {
			t.Errorf("%s: mode %v, want %v", name, got, want)
		}
	}
	for link, target := range map[string]string{"app/start": "run.sh", "current": "app"} {
		if got, err := os.Readlink(filepath.Join(dest, link)); err != nil || got != target {
			t.Errorf("%s -> %q (%v), want %q", link, got, err, target)
		}
	}
	b, err := os.ReadFile(filepath.Join(dest, "current", "start"))
	if err != nil || string(b) != "#!/bin/sh\necho hi\n" {
		t.Errorf("reading through links: %q, %v", b, err)
	}
	a, _ := os.Stat(filepath.Join(dest, "app/run.sh"))
	h, _ := os.Stat(filepath.Join(dest, "app/again"))
	if !os.SameFile(a, h) {
		t.Error("hard link is not the same file")
	}
}

func TestExtractRefusesEscapes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		members []member
		code    string
	}{
		{"relative symlink", []member{file("a", "x"), symlink("sub/link", "../../outside")}, CodePathEscapes},
		{"absolute symlink", []member{file("a", "x"), symlink("link", "/etc")}, CodePathEscapes},
		{"write through symlink", []member{symlink("link", "."), file("link/x", "x")}, CodePathEscapes},
		{"dotdot", []member{file("a", "x"), file("../x", "x")}, CodePathEscapes},
		{"device", []member{{name: "dev", typ: tar.TypeBlock}}, CodePathEscapes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dest := t.TempDir()
			err := Extract(context.Background(), writeTar(t, tc.members...), dest)
			wantError(t, err, tc.code)
			entries, err := os.ReadDir(dest)
			if err != nil {
				t.Fatal(err)
			}
			if len(entries) != 0 {
				t.Errorf("dest is not empty after a refused upload: %v", entries)
			}
			if _, err := os.Lstat(filepath.Join(filepath.Dir(dest), "outside")); err == nil {
				t.Error("wrote outside dest")
			}
		})
	}
}
