package buildsrc

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// member is one tar entry of a test upload; typ defaults to a regular file.
type member struct {
	name string
	typ  byte
	body string
	link string
	mode int64
}

func file(name, body string) member { return member{name: name, typ: tar.TypeReg, body: body} }
func dir(name string) member        { return member{name: name, typ: tar.TypeDir} }
func symlink(name, target string) member {
	return member{name: name, typ: tar.TypeSymlink, link: target}
}

func tarBytes(t *testing.T, members ...member) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		typ := m.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		mode := m.mode
		if mode == 0 {
			mode = 0o644
			if typ == tar.TypeDir {
				mode = 0o755
			}
		}
		h := &tar.Header{Name: m.name, Typeflag: typ, Linkname: m.link, Mode: mode, Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			h.Size = int64(len(m.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("write header %s: %v", m.name, err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write([]byte(m.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func writeTemp(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeTar(t *testing.T, members ...member) string {
	t.Helper()
	return writeTemp(t, tarBytes(t, members...))
}

func gzipped(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// wantError checks err is an *Error with the code, and that its Detail or a
// field names each of mentions.
func wantError(t *testing.T, err error, code string, mentions ...string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("want *Error %s, got %v", code, err)
	}
	if e.Code != code {
		t.Fatalf("want code %s, got %v", code, e)
	}
	text := e.Detail
	for _, f := range e.Fields {
		text += "\n" + f.Field + ": " + f.Detail
	}
	for _, m := range mentions {
		if !strings.Contains(text, m) {
			t.Errorf("error does not mention %q:\n%s", m, text)
		}
	}
}

// fields returns the Field names of an *Error.
func fields(err error) []string {
	var e *Error
	if !errors.As(err, &e) {
		return nil
	}
	var out []string
	for _, f := range e.Fields {
		out = append(out, f.Field)
	}
	return out
}
