package layerdelta

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	dbzip2 "github.com/dsnet/compress/bzip2"
	"github.com/klauspost/compress/zstd"
)

// entry is one tar entry of a synthetic layer.
type entry struct {
	name string
	typ  byte // 0 means regular file
	body []byte
	link string
	pax  map[string]string
	mode int64
}

type layerSpec struct {
	format  tar.Format
	entries []entry
	pad     int // extra zero bytes after the archive (record padding)
}

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func buildTar(t testing.TB, spec layerSpec) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range spec.entries {
		h := &tar.Header{
			Name:       e.name,
			Typeflag:   e.typ,
			Linkname:   e.link,
			Mode:       0o644,
			ModTime:    epoch,
			PAXRecords: e.pax,
			Format:     spec.format,
		}
		if e.mode != 0 {
			h.Mode = e.mode
		}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.Typeflag == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("header %s: %v", e.name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	buf.Write(make([]byte, spec.pad))
	return buf.Bytes()
}

func layersOf(tars ...[]byte) []Layer {
	var ls []Layer
	for _, b := range tars {
		ls = append(ls, Layer{R: bytes.NewReader(b), Size: int64(len(b))})
	}
	return ls
}

// testOptions keeps the zstd encoders small: SpeedBestCompression allocates
// tables of tens of MB per encoder, slow to clear under -race.
// BenchmarkRealPair measures sizes at the default (best) level.
var testOptions = &Options{Level: zstd.SpeedDefault, StreamLevel: zstd.SpeedDefault}

// roundTrip diffs, applies and checks the rebuilt bytes; it returns the
// stats and the patch.
func roundTrip(t testing.TB, old [][]byte, newTar []byte) (Stats, []byte) {
	t.Helper()
	ctx := context.Background()
	var patch bytes.Buffer
	st, err := Diff(ctx, layersOf(old...), bytes.NewReader(newTar), &patch, testOptions)
	if err != nil {
		t.Fatalf("Diff: %v", err)
	}
	if st.PatchSize != int64(patch.Len()) {
		t.Fatalf("Stats.PatchSize %d, wrote %d", st.PatchSize, patch.Len())
	}
	want := Digest(sha256.Sum256(newTar))
	if st.Target != want || st.TargetSize != int64(len(newTar)) {
		t.Fatalf("Stats target %s/%d, want %s/%d", st.Target, st.TargetSize, want, len(newTar))
	}
	var out bytes.Buffer
	info, err := Apply(ctx, layersOf(old...), bytes.NewReader(patch.Bytes()), &out)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if !bytes.Equal(out.Bytes(), newTar) {
		t.Fatalf("rebuilt tar differs (%d bytes, want %d)", out.Len(), len(newTar))
	}
	if info.Target != want || Digest(sha256.Sum256(out.Bytes())) != want {
		t.Fatalf("diffID mismatch")
	}
	return st, patch.Bytes()
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// text returns n bytes of line-structured, somewhat compressible text.
func text(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	words := []string{"func", "return", "if", "err", "nil", "layer", "delta", "tar", "{", "}", "\n", "\t", "x", "y", ":=", "for", "range"}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		b.WriteByte(' ')
		if r.IntN(8) == 0 {
			fmt.Fprintf(&b, "%d\n", r.Uint32())
		}
	}
	return b.Bytes()[:n]
}

// edit returns a copy of b with a few small changes.
func edit(b []byte, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 11))
	out := append([]byte(nil), b...)
	for range 5 {
		i := r.IntN(len(out))
		out = append(out[:i], append([]byte(fmt.Sprintf("/* edit %d */", r.Uint32())), out[i:]...)...)
	}
	return out
}

func TestRoundTripSynthetic(t *testing.T) {
	big := text(1, 200_000)
	bigEdited := edit(big, 2)
	random := randBytes(3, 50_000)
	longName := "very/" + strings.Repeat("long-directory-name/", 12) + "file.txt"

	base := layerSpec{entries: []entry{
		{name: "etc/", typ: tar.TypeDir},
		{name: "etc/config", body: []byte("a=1\nb=2\n")},
		{name: "app/", typ: tar.TypeDir},
		{name: "app/main.go", body: big},
		{name: "app/blob.bin", body: random},
		{name: "app/empty", body: nil},
		{name: "app/old-name", body: text(4, 30_000)},
		{name: "app/gone", body: text(5, 5_000)},
	}}
	baseTar := buildTar(t, base)

	tests := []struct {
		name  string
		old   []layerSpec
		new   layerSpec
		check func(t *testing.T, st Stats)
	}{
		{
			name: "unchanged",
			old:  []layerSpec{base},
			new:  base,
			check: func(t *testing.T, st Stats) {
				if st.RefFiles != st.Files || st.RawFiles+st.PatchedFiles != 0 {
					t.Errorf("stats %+v: want every file a reference", st)
				}
				if st.PatchSize > 2000 {
					t.Errorf("patch of an unchanged layer is %d bytes", st.PatchSize)
				}
			},
		},
		{
			name: "changed",
			old:  []layerSpec{base},
			new: layerSpec{entries: []entry{
				{name: "app/main.go", body: bigEdited},
				{name: "etc/config", body: []byte("a=1\nb=3\n")},
			}},
			check: func(t *testing.T, st Stats) {
				if st.PatchedFiles != 2 || st.Groups != 1 { // one content group, both old versions as its dictionary
					t.Errorf("stats %+v: want main.go and etc/config patched in one group", st)
				}
				if st.PatchBytes > 1000 {
					t.Errorf("patch for 5 small edits is %d bytes", st.PatchBytes)
				}
			},
		},
		{
			name: "added",
			old:  []layerSpec{base},
			new: layerSpec{entries: []entry{
				{name: "app/new.bin", body: randBytes(9, 10_000)},
				{name: "app/new.txt", body: text(10, 10_000)},
			}},
			check: func(t *testing.T, st Stats) {
				if st.RawFiles != 2 {
					t.Errorf("stats %+v: want 2 raw files", st)
				}
			},
		},
		{
			name: "removed with whiteouts",
			old:  []layerSpec{base},
			new: layerSpec{entries: []entry{
				{name: "app/.wh.gone", body: nil},
				{name: "etc/.wh..wh..opq", body: nil},
			}},
		},
		{
			name: "renamed same content",
			old:  []layerSpec{base},
			new: layerSpec{entries: []entry{
				{name: "app/.wh.old-name"},
				{name: "app/new-name", body: text(4, 30_000)},
				{name: "copy/of/blob", body: random},
			}},
			check: func(t *testing.T, st Stats) {
				if st.RefFiles != 2 || st.RawBytes != 0 {
					t.Errorf("stats %+v: want 2 references", st)
				}
			},
		},
		{
			name: "whited-out old file is not a patch base",
			old: []layerSpec{base, {entries: []entry{
				{name: "app/.wh.main.go"},
			}}},
			new: layerSpec{entries: []entry{
				{name: "app/main.go", body: bigEdited},
			}},
			check: func(t *testing.T, st Stats) {
				if st.PatchedFiles != 0 || st.RawFiles != 1 {
					t.Errorf("stats %+v: main.go was deleted in the old image; want raw", st)
				}
			},
		},
		{
			name: "opaque directory hides lower files",
			old: []layerSpec{base, {entries: []entry{
				{name: "app/", typ: tar.TypeDir},
				{name: "app/.wh..wh..opq"},
				{name: "app/fresh", body: []byte("fresh")},
			}}},
			new: layerSpec{entries: []entry{
				{name: "app/main.go", body: bigEdited},
				{name: "app/fresh", body: []byte("fresh")},
			}},
			check: func(t *testing.T, st Stats) {
				if st.PatchedFiles != 0 || st.RefFiles != 1 {
					t.Errorf("stats %+v", st)
				}
			},
		},
		{
			name: "whited-out content still serves as a reference",
			old: []layerSpec{base, {entries: []entry{
				{name: "app/.wh.blob.bin"},
			}}},
			new: layerSpec{entries: []entry{
				{name: "app/blob.bin", body: random},
			}},
			check: func(t *testing.T, st Stats) {
				if st.RefFiles != 1 {
					t.Errorf("stats %+v", st)
				}
			},
		},
		{
			name: "hardlinks and symlinks",
			old: []layerSpec{{entries: []entry{
				{name: "bin/tool", body: text(20, 40_000), mode: 0o755},
				{name: "bin/alias", typ: tar.TypeLink, link: "bin/tool"},
				{name: "bin/sym", typ: tar.TypeSymlink, link: "tool"},
			}}},
			new: layerSpec{entries: []entry{
				{name: "bin/tool2", body: edit(text(20, 40_000), 3), mode: 0o755},
				{name: "bin/alias", body: edit(text(20, 40_000), 4)}, // hardlink in old: patch against its target
				{name: "bin/hl", typ: tar.TypeLink, link: "bin/tool2"},
				{name: "bin/sym2", typ: tar.TypeSymlink, link: "../" + strings.Repeat("x", 150)},
				{name: "dev/null", typ: tar.TypeChar},
				{name: "run/fifo", typ: tar.TypeFifo},
			}},
			check: func(t *testing.T, st Stats) {
				// bin/tool2 against bin/tool (same directory, a name that
				// starts the same way).
				if st.PatchedFiles != 2 || st.DictFiles != 1 {
					t.Errorf("stats %+v: want bin/alias and bin/tool2 patched", st)
				}
			},
		},
		{
			name: "PAX long names and records",
			old:  []layerSpec{{format: tar.FormatPAX, entries: []entry{{name: longName, body: big, pax: map[string]string{"SCHILY.xattr.user.k": "v"}}}}},
			new: layerSpec{format: tar.FormatPAX, entries: []entry{
				{name: longName, body: bigEdited, pax: map[string]string{"SCHILY.xattr.user.k": "w", "SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}},
				{name: longName + ".2", body: big},
			}},
			check: func(t *testing.T, st Stats) {
				if st.PatchedFiles != 1 || st.RefFiles != 1 {
					t.Errorf("stats %+v", st)
				}
			},
		},
		{
			name: "GNU long names",
			old:  []layerSpec{{format: tar.FormatGNU, entries: []entry{{name: longName, body: big}}}},
			new: layerSpec{format: tar.FormatGNU, entries: []entry{
				{name: longName, body: bigEdited},
				{name: longName + "-link", typ: tar.TypeSymlink, link: longName},
			}},
			check: func(t *testing.T, st Stats) {
				if st.PatchedFiles != 1 {
					t.Errorf("stats %+v", st)
				}
			},
		},
		{
			name: "empty files and empty layer",
			old:  []layerSpec{{}, base},
			new: layerSpec{entries: []entry{
				{name: "a", body: nil}, {name: "app/empty", body: nil}, {name: "b/", typ: tar.TypeDir},
			}},
		},
		{
			name: "empty new layer",
			old:  []layerSpec{base},
			new:  layerSpec{},
		},
		{
			name: "no old layers",
			old:  nil,
			new:  base,
			check: func(t *testing.T, st Stats) {
				if st.RefFiles != 0 || st.RawFiles != 5 { // 5 non-empty files
					t.Errorf("stats %+v", st)
				}
			},
		},
		{
			name: "file shadowed by a later old layer",
			old: []layerSpec{
				{entries: []entry{{name: "app/main.go", body: randBytes(30, 200_000)}}},
				{entries: []entry{{name: "app/main.go", body: big}}},
			},
			new: layerSpec{entries: []entry{{name: "app/main.go", body: bigEdited}}},
			check: func(t *testing.T, st Stats) {
				if st.PatchedFiles != 1 || st.PatchBytes > 1000 {
					t.Errorf("stats %+v: want a small patch against the upper version", st)
				}
			},
		},
		{
			name: "record padding after the archive",
			old:  []layerSpec{{entries: base.entries, pad: 10240 - len(baseTar)%10240}},
			new:  layerSpec{entries: []entry{{name: "x", body: big}}, pad: 7000},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var old [][]byte
			for _, l := range tc.old {
				old = append(old, buildTar(t, l))
			}
			st, _ := roundTrip(t, old, buildTar(t, tc.new))
			if tc.check != nil {
				tc.check(t, st)
			}
		})
	}
}

// goTree builds a layer of the files under dir (relative names prefixed by
// prefix), applying edits: a nil value deletes a file, others replace it.
func goTree(t testing.TB, dir, prefix string, edits map[string][]byte) []byte {
	t.Helper()
	var names []string
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files[rel] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range edits {
		if v == nil {
			delete(files, k)
		} else {
			files[k] = v
		}
	}
	for k := range files {
		names = append(names, k)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		h := &tar.Header{Name: prefix + n, Mode: 0o644, Size: int64(len(files[n])), ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(files[n])
	}
	tw.Close()
	return buf.Bytes()
}

// realPair builds two layers of a real source tree from GOROOT: the new one
// with a few files edited, one added, one removed, one renamed.
func realPair(t testing.TB, sub string) (oldTar, newTar []byte) {
	t.Helper()
	dir := filepath.Join(runtime.GOROOT(), "src", sub)
	if _, err := os.Stat(dir); err != nil {
		t.Skipf("no Go source tree at %s", dir)
	}
	var files []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && strings.HasSuffix(p, ".go") {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, rel)
		}
		return nil
	})
	sort.Strings(files)
	if len(files) < 10 {
		t.Skipf("too few files under %s", dir)
	}
	read := func(rel string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	edits := map[string][]byte{}
	for i := 1; i <= 4; i++ { // edit 4 files spread over the tree
		f := files[i*len(files)/5]
		edits[f] = edit(read(f), uint64(i))
	}
	edits[files[0]] = nil                                                        // removed
	edits["renamed_"+files[1]] = read(files[1])                                  // renamed (old one removed)
	edits[files[1]] = nil                                                        //
	edits["added_file.go"] = append([]byte("package added\n"), text(5, 8000)...) // new
	return goTree(t, dir, sub+"/", nil), goTree(t, dir, sub+"/", edits)
}

func TestRoundTripRealGoTree(t *testing.T) {
	oldTar, newTar := realPair(t, "encoding")
	st, _ := roundTrip(t, [][]byte{oldTar}, newTar)
	t.Logf("old %d B, new %d B, patch %d B; %+v", len(oldTar), len(newTar), st.PatchSize, st)
	// The added .go file is compressed against an old .go file of a similar
	// size (the dictionary path) when that beats compressing it alone.
	if st.PatchedFiles-st.DictFiles != 4 || st.RefFiles != st.Files-5 || st.DictFiles+st.RawFiles != 1 {
		t.Errorf("stats %+v: want 4 patched files, 1 new (raw or dictionary), the rest references", st)
	}
	if st.PatchSize > 40_000 {
		t.Errorf("patch is %d bytes for a few edits", st.PatchSize)
	}
	// The same new layer over two old layers (the tree, then a layer that
	// edits one of the files again) rebuilds too.
	upper := goTree(t, filepath.Join(runtime.GOROOT(), "src", "encoding", "json"), "encoding/json/", nil)
	roundTrip(t, [][]byte{oldTar, upper}, newTar)
}

func TestApplyRefusesBadPatches(t *testing.T) {
	ctx := context.Background()
	oldTar, newTar := realPair(t, "encoding/json")
	_, patch := roundTrip(t, [][]byte{oldTar}, newTar)
	apply := func(p []byte, old ...[]byte) error {
		var out bytes.Buffer
		_, err := Apply(ctx, layersOf(old...), bytes.NewReader(p), &out)
		return err
	}

	t.Run("corrupt", func(t *testing.T) {
		positions := []int{0, 3, 7, 8, 40, 50, 60, 100, len(patch) / 3, len(patch) / 2, len(patch) - 40, len(patch) - 33, len(patch) - 1}
		for _, pos := range positions {
			p := append([]byte(nil), patch...)
			p[pos] ^= 0x5a
			err := apply(p, oldTar)
			if err == nil {
				t.Errorf("flip at %d/%d: Apply accepted a corrupt patch", pos, len(p))
				continue
			}
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrWrongBase) &&
				!errors.Is(err, ErrMismatch) && !errors.Is(err, ErrTruncated) {
				t.Errorf("flip at %d: error %v wraps no sentinel", pos, err)
			}
		}
	})
	t.Run("truncated", func(t *testing.T) {
		for _, n := range []int{0, 1, 7, 8, 51, 60, len(patch) / 2, len(patch) - 33, len(patch) - 32, len(patch) - 1} {
			if err := apply(patch[:n], oldTar); err == nil {
				t.Errorf("Apply accepted the first %d of %d bytes", n, len(patch))
			} else if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrCorrupt) {
				t.Errorf("truncated at %d: %v", n, err)
			}
		}
	})
	t.Run("trailing garbage", func(t *testing.T) {
		// Bytes after the trailer are not read; the patch itself is whole.
		if err := apply(append(append([]byte(nil), patch...), 1, 2, 3), oldTar); err != nil {
			t.Errorf("Apply: %v", err)
		}
	})
	t.Run("wrong target with a valid checksum", func(t *testing.T) {
		// A patch whose header names another target (checksum recomputed, as
		// a buggy or malicious producer would) is refused by the diffID check.
		p := append([]byte(nil), patch[:len(patch)-32]...)
		p[8] ^= 1
		sum := sha256.Sum256(p)
		p = append(p, sum[:]...)
		if err := apply(p, oldTar); !errors.Is(err, ErrMismatch) {
			t.Errorf("got %v, want ErrMismatch", err)
		}
	})
	t.Run("target size too small, with a valid checksum", func(t *testing.T) {
		// The checksum is checked at the end: until then a header that
		// understates the target must not let Apply write past it (a
		// group or header chunk may expand a thousandfold).
		for _, size := range []int{0, 1, 4096, len(newTar) / 2, len(newTar) - 1} {
			p := append([]byte(nil), patch[:len(patch)-32]...)
			binary.BigEndian.PutUint64(p[40:48], uint64(size))
			sum := sha256.Sum256(p)
			p = append(p, sum[:]...)
			var out bytes.Buffer
			_, err := Apply(ctx, layersOf(oldTar), bytes.NewReader(p), &out)
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("target of %d bytes: got %v, want ErrCorrupt", size, err)
			}
			if out.Len() > size {
				t.Errorf("target of %d bytes: Apply wrote %d", size, out.Len())
			}
		}
	})
	t.Run("version", func(t *testing.T) {
		p := append([]byte(nil), patch...)
		p[7] = Version + 1
		if err := apply(p, oldTar); !errors.Is(err, ErrVersion) {
			t.Errorf("got %v, want ErrVersion", err)
		}
	})
	t.Run("wrong base", func(t *testing.T) {
		if err := apply(patch, newTar); !errors.Is(err, ErrWrongBase) {
			t.Errorf("other layer: got %v, want ErrWrongBase", err)
		}
		if err := apply(patch); !errors.Is(err, ErrWrongBase) {
			t.Errorf("no layer: got %v, want ErrWrongBase", err)
		}
		if err := apply(patch, oldTar, oldTar); !errors.Is(err, ErrWrongBase) {
			t.Errorf("extra layer: got %v, want ErrWrongBase", err)
		}
		shorter := oldTar[:len(oldTar)-512]
		if err := apply(patch, shorter); !errors.Is(err, ErrWrongBase) {
			t.Errorf("truncated base: got %v, want ErrWrongBase", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := Apply(cctx, layersOf(oldTar), bytes.NewReader(patch), &bytes.Buffer{}); !errors.Is(err, context.Canceled) {
			t.Errorf("Apply: got %v", err)
		}
		if _, err := Diff(cctx, layersOf(oldTar), bytes.NewReader(newTar), &bytes.Buffer{}, nil); !errors.Is(err, context.Canceled) {
			t.Errorf("Diff: got %v", err)
		}
	})
}

func TestLargeFilesStreamWhole(t *testing.T) {
	big := text(40, 100_000)
	oldTar := buildTar(t, layerSpec{entries: []entry{{name: "big", body: big}, {name: "small", body: []byte("x")}}})
	newTar := buildTar(t, layerSpec{entries: []entry{{name: "big", body: edit(big, 1)}, {name: "big2", body: big}, {name: "small", body: []byte("y")}}})
	var patch, out bytes.Buffer
	st, err := Diff(context.Background(), layersOf(oldTar), bytes.NewReader(newTar), &patch, &Options{MaxPatchFile: 50_000, Level: zstd.SpeedDefault, StreamLevel: zstd.SpeedDefault})
	if err != nil {
		t.Fatal(err)
	}
	if st.RawFiles != 2 || st.RawBytes != int64(len(edit(big, 1))+len(big)) || st.PatchedFiles != 1 {
		t.Errorf("stats %+v: want files over MaxPatchFile stored whole", st)
	}
	if _, err := Apply(context.Background(), layersOf(oldTar), &patch, &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), newTar) {
		t.Fatal("rebuilt tar differs")
	}
}

func TestDiffRefusesNonTar(t *testing.T) {
	_, err := Diff(context.Background(), nil, bytes.NewReader(randBytes(1, 4096)), &bytes.Buffer{}, testOptions)
	if !errors.Is(err, ErrTarUnsound) {
		t.Fatalf("got %v, want ErrTarUnsound", err)
	}
}

func TestReadInfo(t *testing.T) {
	oldTar := buildTar(t, layerSpec{entries: []entry{{name: "a", body: []byte("a")}}})
	newTar := buildTar(t, layerSpec{entries: []entry{{name: "a", body: []byte("b")}}})
	st, patch := roundTrip(t, [][]byte{oldTar}, newTar)
	info, err := ReadInfo(bytes.NewReader(patch))
	if err != nil {
		t.Fatal(err)
	}
	if info.Target != st.Target || info.TargetSize != int64(len(newTar)) || len(info.Bases) != 1 || info.Bases[0] != sha256.Sum256(oldTar) {
		t.Fatalf("info %+v", info)
	}
	if !strings.HasPrefix(info.Target.String(), "sha256:") || len(info.Target.String()) != 71 {
		t.Fatalf("digest string %q", info.Target.String())
	}
}

// elfLike returns n bytes shaped like machine code: an ELF header, then
// instructions with a little-endian 32-bit address every 16 bytes. shift
// moves every address (as relinking after a small code change does) and
// insert adds bytes early on, moving everything after them.
func elfLike(seed uint64, n int, shift uint32, insert int) []byte {
	r := rand.New(rand.NewPCG(seed, 13))
	b := append([]byte("\x7fELF\x02\x01\x01\x00"), make([]byte, 56)...)
	b = append(b, randBytes(seed+1, insert)...)
	opcodes := [][]byte{{0x48, 0x8b, 0x05}, {0xe8}, {0x48, 0x8d, 0x0d}, {0xff, 0x15}}
	for len(b) < n {
		op := opcodes[r.IntN(len(opcodes))]
		b = append(b, op...)
		b = binary.LittleEndian.AppendUint32(b, 0x401000+uint32(r.IntN(1<<16))*16+shift)
		b = append(b, make([]byte, 16-len(op)-4)...)
		b[len(b)-1] = byte(r.IntN(4)) // a little noise in the padding
	}
	return b[:n]
}

func TestNewFileDictionary(t *testing.T) {
	lib := text(60, 80_000)
	tests := []struct {
		name     string
		oldPath  string
		newPath  string
		body     []byte
		opts     Options
		wantDict int
	}{
		// A package moved to a versioned directory: same base name.
		{name: "same base name", oldPath: "node_modules/.pnpm/lib@1.0.0/node_modules/lib/index.js",
			newPath: "node_modules/.pnpm/lib@1.0.1/node_modules/lib/index.js", body: edit(lib, 1), wantDict: 1},
		{name: "same extension, similar size", oldPath: "src/a/util.go", newPath: "src/b/helpers.go", body: edit(lib, 2), wantDict: 1},
		{name: "dictionary off", oldPath: "src/a/util.go", newPath: "src/b/helpers.go", body: edit(lib, 2), opts: Options{NoDict: true}},
		// The candidate joins the group's dictionary even when useless: it
		// costs a step, not patch bytes.
		{name: "no shared content", oldPath: "data/x.bin", newPath: "data/y.bin", body: randBytes(61, 80_000), wantDict: 1},
		{name: "other extension", oldPath: "src/a/util.go", newPath: "src/b/notes.txt", body: edit(lib, 3)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			oldBody := lib
			if tc.name == "no shared content" {
				oldBody = randBytes(62, 80_000)
			}
			oldTar := buildTar(t, layerSpec{entries: []entry{{name: tc.oldPath, body: oldBody}}})
			newTar := buildTar(t, layerSpec{entries: []entry{{name: tc.newPath, body: tc.body}}})
			opts := tc.opts
			opts.Level, opts.StreamLevel = zstd.SpeedDefault, zstd.SpeedDefault
			ctx := context.Background()
			var patch, out bytes.Buffer
			st, err := Diff(ctx, layersOf(oldTar), bytes.NewReader(newTar), &patch, &opts)
			if err != nil {
				t.Fatal(err)
			}
			if st.DictFiles != tc.wantDict || st.PatchedFiles != tc.wantDict || st.RawFiles != 1-tc.wantDict {
				t.Errorf("stats %+v: want %d dictionary files", st, tc.wantDict)
			}
			if tc.wantDict == 1 && st.PatchSize > 2000 && tc.name != "no shared content" {
				t.Errorf("patch %d B for a lightly edited copy under a new name", st.PatchSize)
			}
			if _, err := Apply(ctx, layersOf(oldTar), bytes.NewReader(patch.Bytes()), &out); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if !bytes.Equal(out.Bytes(), newTar) {
				t.Fatal("rebuilt tar differs")
			}
		})
	}
}

// rewrite sets a patch's version byte and recomputes its checksum.
func rewrite(patch []byte, version byte) []byte {
	p := append([]byte(nil), patch[:len(patch)-32]...)
	p[7] = version
	sum := sha256.Sum256(p)
	return append(p, sum[:]...)
}

func TestVersions(t *testing.T) {
	ctx := context.Background()
	bin := elfLike(2, 64<<10, 0, 0)
	oldTar := buildTar(t, layerSpec{entries: []entry{{name: "app", body: bin}, {name: "doc", body: text(70, 50_000)}}})
	binTar := buildTar(t, layerSpec{entries: []entry{{name: "app", body: elfLike(2, 64<<10, 0x80, 8)}}})
	textTar := buildTar(t, layerSpec{entries: []entry{{name: "doc", body: edit(text(70, 50_000), 1)}}})
	diff := func(newTar []byte) ([]byte, Stats) {
		var patch bytes.Buffer
		st, err := Diff(ctx, layersOf(oldTar), bytes.NewReader(newTar), &patch, testOptions)
		if err != nil {
			t.Fatal(err)
		}
		return patch.Bytes(), st
	}
	binPatch, _ := diff(binTar)
	textPatch, _ := diff(textTar)
	tests := []struct {
		name  string
		patch []byte
		want  error
	}{
		{"version 4, binary", binPatch, nil},
		{"version 4", textPatch, nil},
		// A version 4 patch read as version 3 (a zstd header stream).
		{"version 4 as 3", rewrite(textPatch, 3), ErrCorrupt},
		// Versions 1 and 2 (a zstd frame per file) are no longer read:
		// none was ever stored.
		{"version 2", rewrite(textPatch, 2), ErrVersion},
		{"version 1", rewrite(textPatch, 1), ErrVersion},
		{"version 0", rewrite(textPatch, 0), ErrVersion},
		{"next version", rewrite(textPatch, Version+1), ErrVersion},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Apply(ctx, layersOf(oldTar), bytes.NewReader(tc.patch), io.Discard)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
			if _, err := ReadInfo(bytes.NewReader(tc.patch)); errors.Is(err, ErrVersion) != (tc.want == ErrVersion) {
				t.Errorf("ReadInfo: %v", err)
			}
		})
	}
}

// TestManyHeaders diffs layers of so many small files that their headers
// fill more than one chunk of the header stream, some of them changed,
// renamed, added or removed.
func TestManyHeaders(t *testing.T) {
	const files = 9000 // ~1 KiB of header and padding each: 9 MB, two chunks
	var oldE, newE []entry
	for i := range files {
		body := []byte(fmt.Sprintf("file %d\n", i))
		oldE = append(oldE, entry{name: fmt.Sprintf("app/node_modules/pkg%03d/lib/f%05d.js", i/100, i), body: body})
		switch {
		case i%1000 == 7:
			continue // removed
		case i%1000 == 11:
			body = []byte(fmt.Sprintf("file %d, changed\n", i))
		case i%1000 == 13:
			newE = append(newE, entry{name: fmt.Sprintf("app/node_modules/pkg%03d/lib/renamed%05d.js", i/100, i), body: body})
			continue
		case i%1000 == 17:
			newE = append(newE, entry{name: fmt.Sprintf("app/node_modules/pkg%03d/lib/added%05d.js", i/100, i), body: []byte("new\n")})
		}
		newE = append(newE, entry{name: fmt.Sprintf("app/node_modules/pkg%03d/lib/f%05d.js", i/100, i), body: body})
	}
	oldTar := buildTar(t, layerSpec{entries: oldE})
	newTar := buildTar(t, layerSpec{entries: newE})
	st, patch := roundTrip(t, [][]byte{oldTar}, newTar)
	if st.MetaBytes <= metaChunk {
		t.Fatalf("%d bytes of headers: the test wants more than one chunk", st.MetaBytes)
	}
	// 36 headers differ from their old versions: the header stream costs
	// about that many headers' worth of bytes, not the 9 MB.
	if st.MetaSize > 8<<10 || len(patch) > 16<<10 {
		t.Errorf("headers %d → %d bytes, patch %d bytes", st.MetaBytes, st.MetaSize, len(patch))
	}
}

// TestVersion3 applies a version 3 patch (header stream: one zstd frame
// with the old headers as dictionary) that Diff wrote before version 4:
// deltas stored then still apply.
func TestVersion3(t *testing.T) {
	patch, err := os.ReadFile("testdata/v3.patch")
	if err != nil {
		t.Fatal(err)
	}
	oldTar := buildTar(t, layerSpec{entries: []entry{{name: "app", body: elfLike(2, 64<<10, 0, 0)}, {name: "doc", body: text(70, 50_000)}}})
	newTar := buildTar(t, layerSpec{entries: []entry{{name: "doc", body: edit(text(70, 50_000), 1)}, {name: "app", body: elfLike(2, 64<<10, 0x80, 8)}}})
	var out bytes.Buffer
	info, err := Apply(context.Background(), layersOf(oldTar), bytes.NewReader(patch), &out)
	if err != nil || info.Version != 3 {
		t.Fatalf("apply version %d: %v", info.Version, err)
	}
	if !bytes.Equal(out.Bytes(), newTar) {
		t.Fatal("rebuilt tar differs")
	}
}

func TestGpatchRefusesBadControls(t *testing.T) {
	old := elfLike(5, 64<<10, 0, 0)
	newer := elfLike(5, 64<<10, 0x40, 16)
	newer = append(newer, text(6, 2000)...) // extra bytes too
	nw := append([]byte(nil), newer...)     // gdiff writes over its input
	ctrl, db, eb := gdiff(old, nw, slackBinary, matchStride, &gbufs{})
	ctrl, db, eb = slices.Clone(ctrl), slices.Clone(db), slices.Clone(eb)
	if out, err := gpatch(old, ctrl, db, eb, len(newer)); err != nil || !bytes.Equal(out, newer) {
		t.Fatalf("gpatch of a good group: %v", err)
	}
	if len(eb) == 0 || len(db) == 0 {
		t.Fatalf("%d difference and %d extra bytes: the test wants both", len(db), len(eb))
	}
	ctl := func(vals ...int64) []byte {
		var b []byte
		for i, v := range vals {
			if i%3 == 2 {
				b = binary.AppendUvarint(b, uint64(v<<1)^uint64(v>>63))
			} else {
				b = binary.AppendUvarint(b, uint64(v))
			}
		}
		return b
	}
	tests := []struct {
		name        string
		ctrl, db, e []byte
		n           int
	}{
		{"longer result", ctrl, db, eb, len(newer) + 1},
		{"shorter result", ctrl, db, eb, len(newer) - 1},
		{"controls cut short", ctrl[:len(ctrl)-1], db, eb, len(newer)},
		{"difference bytes left over", ctrl, append(slices.Clone(db), 0), eb, len(newer)},
		{"extra bytes left over", ctrl, db, append(slices.Clone(eb), 0), len(newer)},
		{"difference bytes missing", ctrl, db[:len(db)-1], eb, len(newer)},
		{"extra bytes missing", ctrl, db, eb[:len(eb)-1], len(newer)},
		{"add past the base", ctl(int64(len(old))+1, 0, 0), make([]byte, len(old)+1), nil, len(old) + 1},
		{"seek before the base", ctl(1, 0, -5, 1, 0, 0), make([]byte, 2), nil, 2},
		{"huge seek", ctl(1, 0, 1<<50, 1, 0, 0), make([]byte, 2), nil, 2},
		{"huge add", ctl(1<<62, 0, 0), db, nil, len(newer)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := gpatch(old, tc.ctrl, tc.db, tc.e, tc.n); !errors.Is(err, ErrCorrupt) {
				t.Errorf("got %v, want ErrCorrupt", err)
			}
		})
	}
}

func TestUnpackStreamRefuses(t *testing.T) {
	zs, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer zs.Close()
	raw := bytes.Repeat(text(7, 3000), 3)
	for _, method := range []byte{streamZstd, streamBzip2} {
		var bufs gbufs
		good, err := packStream(nil, raw, zs, &bufs)
		if err != nil {
			t.Fatal(err)
		}
		if method == streamBzip2 {
			// Force bzip2: pack with a zstd stream made worse than bzip2.
			var b bytes.Buffer
			bw, _ := dbzip2.NewWriter(&b, nil)
			bw.Write(raw)
			bw.Close()
			good = append([]byte{streamBzip2}, binary.AppendUvarint(binary.AppendUvarint(nil, uint64(len(raw))), uint64(b.Len()))...)
			good = append(good, b.Bytes()...)
		}
		read := func(p []byte, limit uint64) ([]byte, error) {
			r := bufio.NewReader(bytes.NewReader(p))
			return unpackStream(r, r, limit)
		}
		if out, err := read(good, uint64(len(raw))); err != nil || !bytes.Equal(out, raw) {
			t.Fatalf("method %d: good stream: %v", method, err)
		}
		hdrLen := 1 + len(binary.AppendUvarint(nil, uint64(len(raw))))
		clen, _ := binary.Uvarint(good[hdrLen:])
		body := len(good) - int(clen)
		tests := []struct {
			name  string
			p     []byte
			limit uint64
			want  error
		}{
			{"over the limit", good, uint64(len(raw)) - 1, ErrCorrupt},
			{"unknown method", append([]byte{9}, good[1:]...), uint64(len(raw)), ErrCorrupt},
			{"truncated", good[:len(good)-3], uint64(len(raw)), ErrTruncated},
			{"garbage", append(slices.Clone(good[:body]), randBytes(8, int(clen))...), uint64(len(raw)), ErrCorrupt},
			{"says longer", append(append([]byte{good[0]}, binary.AppendUvarint(nil, uint64(len(raw))+1)...), good[hdrLen:]...), uint64(len(raw)) + 1, ErrCorrupt},
			{"says shorter", append(append([]byte{good[0]}, binary.AppendUvarint(nil, uint64(len(raw))-1)...), good[hdrLen:]...), uint64(len(raw)), ErrCorrupt},
		}
		for _, tc := range tests {
			t.Run(fmt.Sprintf("%d %s", method, tc.name), func(t *testing.T) {
				if _, err := read(tc.p, tc.limit); !errors.Is(err, tc.want) {
					t.Errorf("got %v, want %v", err, tc.want)
				}
			})
		}
	}
}

// rewriteOps decodes a patch's op stream, lets f change it, and writes the
// patch again with a valid checksum, as a buggy or malicious producer would.
func rewriteOps(t *testing.T, patch []byte, nBases int, f func(ops []byte) []byte) []byte {
	t.Helper()
	off := 52 + 40*nBases
	metaLen := int(binary.BigEndian.Uint64(patch[off:]))
	opsAt := off + 8 + metaLen
	opsLen := int(binary.BigEndian.Uint64(patch[opsAt:]))
	d, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ops, err := d.DecodeAll(patch[opsAt+8:opsAt+8+opsLen], nil)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := zstd.NewWriter(nil)
	comp := e.EncodeAll(f(ops), nil)
	p := append([]byte(nil), patch[:opsAt]...)
	p = binary.BigEndian.AppendUint64(p, uint64(len(comp)))
	p = append(p, comp...)
	sum := sha256.Sum256(p)
	return append(p, sum[:]...)
}

func TestApplyRefusesBadGroups(t *testing.T) {
	ctx := context.Background()
	src := text(9, 30_000)
	oldTar := buildTar(t, layerSpec{entries: []entry{{name: "a", body: src}}})
	newTar := buildTar(t, layerSpec{entries: []entry{{name: "a", body: edit(src, 1)}}})
	_, patch := roundTrip(t, [][]byte{oldTar}, newTar)
	// The op stream: opGroup, 1 base, step 0, new length, three streams,
	// opGrouped, opEnd.
	var newLen uint64
	rewriteOps(t, patch, 1, func(ops []byte) []byte {
		if ops[0] != opGroup || ops[1] != 1 || ops[2] != 0 || ops[len(ops)-2] != opGrouped || ops[len(ops)-1] != opEnd {
			t.Fatalf("op stream % x...: not the expected layout", ops[:8])
		}
		newLen, _ = binary.Uvarint(ops[3:])
		return ops
	})
	withLen := func(ops []byte, n uint64) []byte {
		_, k := binary.Uvarint(ops[3:])
		return append(append(slices.Clone(ops[:3]), binary.AppendUvarint(nil, n)...), ops[3+k:]...)
	}
	tests := []struct {
		name string
		f    func(ops []byte) []byte
		want error
	}{
		{"unchanged", func(ops []byte) []byte { return ops }, nil},
		{"group longer than its files", func(ops []byte) []byte { return withLen(ops, newLen+1) }, ErrCorrupt},
		{"group shorter than its files", func(ops []byte) []byte { return withLen(ops, newLen-1) }, ErrCorrupt},
		{"empty group", func(ops []byte) []byte { return withLen(ops, 0) }, ErrCorrupt},
		{"group larger than the target", func(ops []byte) []byte { return withLen(ops, 1<<40) }, ErrCorrupt},
		{"base out of range", func(ops []byte) []byte { o := slices.Clone(ops); o[2] = 2; return o }, ErrCorrupt},
		{"more bases than old files", func(ops []byte) []byte { o := slices.Clone(ops); o[1] = 5; return o }, ErrCorrupt},
		{"group with no file", func(ops []byte) []byte { return append(slices.Clone(ops[:len(ops)-2]), opEnd) }, ErrCorrupt},
		{"second group before the first is used", func(ops []byte) []byte {
			return append(append(slices.Clone(ops[:len(ops)-2]), ops[:len(ops)-2]...), opGrouped, opEnd)
		}, ErrCorrupt},
		{"cut inside the group", func(ops []byte) []byte { return ops[:len(ops)/2] }, ErrTruncated},
		{"no end", func(ops []byte) []byte { return ops[:len(ops)-1] }, ErrTruncated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := rewriteOps(t, patch, 1, tc.f)
			_, err := Apply(ctx, layersOf(oldTar), bytes.NewReader(p), io.Discard)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestTail checks that tail reads back exactly the last max non-content
// bytes seen, across layers, merged and partly dropped spans.
func TestTail(t *testing.T) {
	type seen struct {
		layer int
		off   int64
		n     int
	}
	tests := []struct {
		name string
		max  int
		seen []seen
	}{
		{"nothing", 100, nil},
		{"less than max", 1000, []seen{{0, 0, 10}, {0, 50, 20}, {0, 70, 30}}},
		{"exactly max", 60, []seen{{0, 0, 10}, {0, 10, 20}, {0, 30, 30}}},
		{"contiguous, merged, cut in the middle", 25, []seen{{0, 0, 10}, {0, 10, 20}, {0, 30, 10}}},
		{"across layers", 90, []seen{{0, 0, 100}, {0, 200, 7}, {1, 0, 30}, {1, 30, 3}, {2, 5, 40}}},
		{"a layer boundary at the same offset does not merge", 1000, []seen{{0, 0, 10}, {1, 10, 10}}},
		{"many spans dropped", 300, func() []seen {
			var ss []seen
			for i := range 5000 {
				ss = append(ss, seen{i % 3, int64(i * 100), 1 + i%50})
			}
			return ss
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			layers := make([][]byte, 3)
			for i := range layers {
				layers[i] = randBytes(uint64(i+1), 600_000)
			}
			tl := &tail{max: tt.max}
			var all []byte
			for _, s := range tt.seen {
				tl.add(s.layer, s.off, s.n)
				all = append(all, layers[s.layer][s.off:s.off+int64(s.n)]...)
			}
			readers := []io.ReaderAt{bytes.NewReader(layers[0]), bytes.NewReader(layers[1]), bytes.NewReader(layers[2])}
			got, err := tl.read(readers)
			if err != nil {
				t.Fatal(err)
			}
			want := all[max(0, len(all)-tt.max):]
			if !bytes.Equal(got, want) || cap(got) != len(want) {
				t.Errorf("read %d bytes (cap %d), want the last %d", len(got), cap(got), len(want))
			}
			if len(tl.spans) > 2100 {
				t.Errorf("holds %d spans for %d bytes", len(tl.spans), tt.max)
			}
		})
	}
	t.Run("layer shorter than a span", func(t *testing.T) {
		tl := &tail{max: 100}
		tl.add(0, 0, 50)
		if _, err := tl.read([]io.ReaderAt{bytes.NewReader(make([]byte, 40))}); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("read = %v, want io.ErrUnexpectedEOF", err)
		}
	})
}

// FuzzApply feeds Apply damaged patches: it must refuse them with one of
// its errors, never panic or hand back a layer that is not the target.
// `go test -fuzz FuzzApply` explores; plain test runs try the seeds.
func FuzzApply(f *testing.F) {
	oldTar := buildTar(f, layerSpec{entries: []entry{{name: "app", body: elfLike(2, 64<<10, 0, 0)}, {name: "doc", body: text(70, 50_000)}}})
	newTar := buildTar(f, layerSpec{entries: []entry{{name: "doc", body: edit(text(70, 50_000), 1)}, {name: "app", body: elfLike(2, 64<<10, 0x80, 8)},
		{name: "new.txt", body: text(3, 4000)}}})
	var patch bytes.Buffer
	if _, err := Diff(context.Background(), layersOf(oldTar), bytes.NewReader(newTar), &patch, testOptions); err != nil {
		f.Fatal(err)
	}
	good := patch.Bytes()
	f.Add(good, uint32(0), byte(0), false)
	f.Add(good, uint32(len(good)/2), byte(1), false)
	f.Add(good, uint32(100), byte(0x80), true)
	f.Fuzz(func(t *testing.T, p []byte, at uint32, flip byte, resum bool) {
		p = slices.Clone(p)
		if len(p) > 0 {
			p[int(at)%len(p)] ^= flip
		}
		if resum && len(p) > 32 {
			// Past the checksum, to reach the decoders' own checks.
			sum := sha256.Sum256(p[:len(p)-32])
			copy(p[len(p)-32:], sum[:])
		}
		var out bytes.Buffer
		_, err := Apply(context.Background(), layersOf(oldTar), bytes.NewReader(p), &out)
		if err == nil {
			if !bytes.Equal(out.Bytes(), newTar) {
				t.Fatal("Apply accepted a patch and rebuilt something else")
			}
			return
		}
		for _, want := range []error{ErrCorrupt, ErrTruncated, ErrVersion, ErrWrongBase, ErrMismatch} {
			if errors.Is(err, want) {
				return
			}
		}
		t.Fatalf("Apply: %v, not one of its errors", err)
	})
}
