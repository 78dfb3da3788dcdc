package layerdelta

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
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
	benchPair(b, sub, oldTar, newTar)
}

// BenchmarkGoBinaryPair diffs two layers holding a Go program built at two
// versions (a small source change), the case where bsdiff beats zstd.
func BenchmarkGoBinaryPair(b *testing.B) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		b.Skip("no go command")
	}
	dir := b.TempDir()
	build := func(extra string) []byte {
		src := "package main\n\nimport (\n\t\"fmt\"\n\t\"net/http\"\n\t\"os\"\n)\n\nfunc main() {\n\tfmt.Println(\"serving\", os.Args)\n\t" + extra + "\n\thttp.ListenAndServe(\":8080\", nil)\n}\n"
		if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
			b.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module example.com/app\n\ngo 1.22\n"), 0o644)
		cmd := exec.Command(goBin, "build", "-trimpath", "-o", "app")
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-buildvcs=false")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("go build: %v: %s", err, out)
		}
		bin, err := os.ReadFile(filepath.Join(dir, "app"))
		if err != nil {
			b.Fatal(err)
		}
		return buildTar(b, layerSpec{entries: []entry{
			{name: "app/", typ: tar.TypeDir},
			{name: "app/server", body: bin, mode: 0o755},
			{name: "app/VERSION", body: []byte(extra)},
		}})
	}
	oldTar := build(`fmt.Println("v1")`)
	newTar := build(`fmt.Println("v2", len(os.Environ()))`)
	benchPair(b, "go binary", oldTar, newTar)
}

// benchOptions reads LAYERDELTA_BENCH_LEVEL (fastest, default, better, best).
func benchOptions(b *testing.B) *Options {
	name := os.Getenv("LAYERDELTA_BENCH_LEVEL")
	if name == "" {
		return nil
	}
	ok, level := zstd.EncoderLevelFromString(name)
	if !ok {
		b.Fatalf("LAYERDELTA_BENCH_LEVEL=%q", name)
	}
	return &Options{Level: level, StreamLevel: level}
}

func benchPair(b *testing.B, name string, oldTar, newTar []byte) {
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
	var peak uint64
	b.ResetTimer()
	for b.Loop() {
		var patch bytes.Buffer
		var err error
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		base := ms.HeapInuse
		done := make(chan struct{})
		sampled := make(chan uint64)
		go func() {
			var max uint64
			t := time.NewTicker(5 * time.Millisecond)
			defer t.Stop()
			for {
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > base && ms.HeapInuse-base > max {
					max = ms.HeapInuse - base
				}
				select {
				case <-done:
					sampled <- max
					return
				case <-t.C:
				}
			}
		}()
		st, err = Diff(context.Background(), layersOf(oldTar), bytes.NewReader(newTar), &patch, benchOptions(b))
		close(done)
		peak = max(peak, <-sampled)
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(len(newTar)), "tar-B")
	b.ReportMetric(float64(gz.Len()), "gzip-B")
	b.ReportMetric(float64(st.PatchSize), "delta-B")
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MiB")
	b.Logf("%s: tar %d B, gzip %d B, layerdelta %d B, peak heap ≈ %.1f MiB (%d refs, %d patched → %d B, %d raw %d B, meta %d B → %d B)",
		name, len(newTar), gz.Len(), st.PatchSize, float64(peak)/(1<<20), st.RefFiles, st.PatchedFiles, st.PatchBytes, st.RawFiles, st.RawBytes, st.MetaBytes, st.MetaSize)

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
