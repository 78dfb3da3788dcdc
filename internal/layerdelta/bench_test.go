package layerdelta

import (
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BenchmarkRealPair diffs two layers of a real Go source tree
// (LAYERDELTA_BENCH_TREE under GOROOT/src, default "runtime"; "cmd" is
// larger) with a few files edited, added, removed and renamed, and reports
// the patch size next to the whole-tar tools' when they are installed
// (zstd -19 --long=31 --patch-from, bsdiff, xdelta3 -9; Debian packages zstd,
// bsdiff, xdelta3). Missing tools are skipped.
//
//	go test -run '^$' -bench RealPair -benchtime 1x ./internal/layerdelta/
func BenchmarkRealPair(b *testing.B) {
	sub := os.Getenv("LAYERDELTA_BENCH_TREE")
	if sub == "" {
		sub = "runtime"
	}
	oldTar, newTar := realPair(b, sub)
	dir := b.TempDir()
	oldPath, newPath := filepath.Join(dir, "old.tar"), filepath.Join(dir, "new.tar")
	if err := os.WriteFile(oldPath, oldTar, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(newPath, newTar, 0o644); err != nil {
		b.Fatal(err)
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.DefaultCompression)
	zw.Write(newTar)
	zw.Close()

	var st Stats
	b.ResetTimer()
	for b.Loop() {
		var patch bytes.Buffer
		var err error
		st, err = Diff(context.Background(), layersOf(oldTar), bytes.NewReader(newTar), &patch, nil)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(len(newTar)), "tar-B")
	b.ReportMetric(float64(gz.Len()), "gzip-B")
	b.ReportMetric(float64(st.PatchSize), "delta-B")
	b.Logf("%s: tar %d B, gzip %d B, layerdelta %d B (%d refs, %d patched → %d B, %d raw %d B, meta %d B)",
		sub, len(newTar), gz.Len(), st.PatchSize, st.RefFiles, st.PatchedFiles, st.PatchBytes, st.RawFiles, st.RawBytes, st.MetaBytes)

	tools := []struct {
		name string
		args []string
	}{
		{"zstd", []string{"-q", "-f", "-19", "--long=31", "--patch-from=" + oldPath, newPath, "-o"}},
		{"bsdiff", []string{oldPath, newPath}},
		{"xdelta3", []string{"-f", "-e", "-9", "-s", oldPath, newPath}},
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool.name); err != nil {
			b.Logf("%s: not installed, skipped", tool.name)
			continue
		}
		out := filepath.Join(dir, tool.name+".patch")
		start := time.Now()
		cmd := exec.Command(tool.name, append(tool.args, out)...)
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.Logf("%s: %v: %s", tool.name, err, msg)
			continue
		}
		elapsed := time.Since(start)
		fi, err := os.Stat(out)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(fi.Size()), tool.name+"-B")
		b.Logf("%s: %d B in %v (layerdelta/%s = %.2f)", tool.name, fi.Size(), elapsed.Round(time.Millisecond), tool.name, float64(st.PatchSize)/float64(fi.Size()))
	}
}
