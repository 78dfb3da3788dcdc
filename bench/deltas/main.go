// Command deltas measures internal/layerdelta (issue 14, part D) on real
// layer pairs against whole-tar bsdiff, xdelta3 -9 and
// zstd -19 --long=31 --patch-from (Debian packages bsdiff, xdelta3, zstd).
//
// It builds each pair once into -cache (reruns reuse them):
//
//   - npm: an app's node_modules (typescript, react-dom, lodash, express,
//     axios, zod, date-fns, rxjs, uuid, commander), four of them bumped a
//     patch release (typescript 5.6.2→5.6.3, axios 1.7.7→1.7.8, express
//     4.21.1→4.21.2, zod 3.23.7→3.23.8), fetched with npm pack;
//   - gobin: five programs of golang.org/x/tools (stringer, goimports,
//     callgraph, deadcode, digraph) built with go install at v0.29.0 and
//     v0.30.0 (-trimpath -ldflags=-s -w, the usual container build), from
//     the module proxy into a private GOPATH;
//   - gosrc: the Go toolchain's src/cmd tree, and the same with ~3% of its
//     files edited (chosen and edited deterministically from a hash of the
//     path), 0.2% removed and 0.2% added (copies of other files, lightly
//     edited, under new names).
//
// For each pair it reports the new layer's size uncompressed and gzipped,
// the largest changed file, and for layerdelta.Diff and each tool the delta
// size, the wall time and the peak RSS of the process that computed it.
// Diff runs in a child process (this program re-executed), so its peak RSS
// counts the whole process as the tools' does; both come from wait4's
// rusage. Each layerdelta patch is applied (in another child) and the
// result's sha256 checked against the new tar's.
//
//	go run ./bench/deltas [-cache DIR] [-pairs npm,gobin,gosrc] [-tools=false]
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/flock-io/flock-api/internal/layerdelta"
)

var epoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-child" {
		child(os.Args[2:])
		return
	}
	cacheDefault := filepath.Join(os.TempDir(), "flock-bench-deltas")
	if d, err := os.UserCacheDir(); err == nil {
		cacheDefault = filepath.Join(d, "flock-bench-deltas")
	}
	cache := flag.String("cache", cacheDefault, "directory for the built layer pairs and the patches")
	pairs := flag.String("pairs", "npm,gobin,gosrc", "pairs to build and measure")
	tools := flag.Bool("tools", true, "run bsdiff, xdelta3 and zstd on the whole tars")
	level := flag.String("level", "", "layerdelta Options.Level (fastest, default, better, best; empty: the package default)")
	streamLevel := flag.String("stream-level", "", "layerdelta Options.StreamLevel")
	group := flag.Int64("group", 0, "layerdelta Options.MaxGroup in bytes (0: the package default)")
	flag.Parse()
	log.SetFlags(log.Ltime)

	var rows []row
	for _, name := range strings.Split(*pairs, ",") {
		dir := filepath.Join(*cache, name)
		if err := buildPair(name, dir); err != nil {
			log.Fatalf("%s: %v", name, err)
		}
		r, err := measure(name, dir, *tools, []string{"-level=" + *level, "-stream-level=" + *streamLevel, fmt.Sprint("-group=", *group)})
		if err != nil {
			log.Fatalf("%s: %v", name, err)
		}
		rows = append(rows, r)
		fmt.Println(r.detail)
	}
	fmt.Println()
	printTable(os.Stdout, rows)
}

// ---------------------------------------------------------------- measuring

type result struct {
	Size int64
	Wall time.Duration
	RSS  int64 // bytes
	Err  string
}

type row struct {
	name          string
	tarSize, gz   int64
	largest       int64
	ours          result
	heapPeak      int64
	apply         result
	tools         map[string]result
	stats         layerdelta.Stats
	detail        string
	roundTripOK   bool
	roundTripNote string
}

var toolNames = []string{"bsdiff", "xdelta3 -9", "zstd -19 --long=31"}

// run runs a command and measures its wall time and peak RSS. The RSS comes
// from /usr/bin/time (GNU time, %M) when installed: wait4's ru_maxrss for a
// child of this process would start from this process's own RSS (Go starts
// children with vfork, and Linux carries the parent's high-water mark over
// exec), which holds a pair's tars. Without it, from wait4 all the same.
func run(name string, args ...string) (result, []byte, error) {
	var timeOut string
	if _, err := os.Stat("/usr/bin/time"); err == nil {
		f, err := os.CreateTemp("", "deltas-time")
		if err != nil {
			return result{}, nil, err
		}
		f.Close()
		timeOut = f.Name()
		defer os.Remove(timeOut)
		args = append([]string{"-f", "%e %M", "-o", timeOut, name}, args...)
		name = "/usr/bin/time"
	}
	cmd := exec.Command(name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{Wall: time.Since(start)}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && ru != nil {
		r.RSS = ru.Maxrss * 1024 // KiB on Linux
	}
	if timeOut != "" {
		b, _ := os.ReadFile(timeOut)
		fields := strings.Fields(string(b))
		if len(fields) >= 2 {
			var kb int64
			if _, err := fmt.Sscan(fields[len(fields)-1], &kb); err == nil {
				r.RSS = kb * 1024
			}
		}
	}
	if err != nil {
		return r, out.Bytes(), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, errb.Bytes())
	}
	return r, out.Bytes(), nil
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return -1
	}
	return fi.Size()
}

func measure(name, dir string, tools bool, opts []string) (row, error) {
	r := row{name: name, tools: map[string]result{}}
	oldP, newP := filepath.Join(dir, "old.tar"), filepath.Join(dir, "new.tar")
	r.tarSize = fileSize(newP)
	newTar, err := os.ReadFile(newP)
	if err != nil {
		return r, err
	}
	var gz countWriter
	zw, _ := gzip.NewWriterLevel(&gz, gzip.DefaultCompression)
	zw.Write(newTar)
	zw.Close()
	r.gz = gz.n
	want := sha256.Sum256(newTar)
	newTar = nil
	if r.largest, err = largestChanged(oldP, newP); err != nil {
		return r, err
	}

	self, err := os.Executable()
	if err != nil {
		return r, err
	}
	patchP := filepath.Join(dir, "layerdelta.patch")
	log.Printf("%s: layerdelta.Diff", name)
	res, out, err := run(self, append([]string{"-child", "diff", oldP, newP, patchP}, opts...)...)
	if err != nil {
		return r, err
	}
	var cr childReport
	if err := json.Unmarshal(out, &cr); err != nil {
		return r, fmt.Errorf("child said %q: %v", out, err)
	}
	res.Size = fileSize(patchP)
	r.ours, r.stats, r.heapPeak = res, cr.Stats, cr.HeapPeak
	log.Printf("%s: layerdelta.Apply", name)
	res, out, err = run(self, "-child", "apply", oldP, patchP)
	r.apply = res
	if err != nil {
		r.roundTripNote = err.Error()
	} else {
		json.Unmarshal(out, &cr)
		r.roundTripOK = cr.Sum == hex.EncodeToString(want[:])
		if !r.roundTripOK {
			r.roundTripNote = "rebuilt sha256 " + cr.Sum + ", want " + hex.EncodeToString(want[:])
		}
	}
	if !r.roundTripOK {
		return r, fmt.Errorf("round trip failed: %s", r.roundTripNote)
	}

	if tools {
		for _, t := range toolNames {
			out := filepath.Join(dir, strings.Fields(t)[0]+".patch")
			var args []string
			switch t {
			case "bsdiff":
				args = []string{"bsdiff", oldP, newP, out}
			case "xdelta3 -9":
				args = []string{"xdelta3", "-f", "-e", "-9", "-s", oldP, newP, out}
			default:
				args = []string{"zstd", "-q", "-f", "-19", "--long=31", "--patch-from=" + oldP, newP, "-o", out}
			}
			log.Printf("%s: %s", name, t)
			res, _, err := run(args[0], args[1:]...)
			if err != nil {
				res.Err = err.Error()
				log.Print(err)
			}
			res.Size = fileSize(out)
			r.tools[t] = res
		}
	}
	st := r.stats
	r.detail = fmt.Sprintf("%s: %d files: %d references (%s), %d patched (%s; %d new files against another old file), %d without a base (%s), in %d content groups → %s; headers %s → %s, ops %s; Go heap peak %s; apply %v, %s RSS",
		name, st.Files, st.RefFiles, mib(st.RefBytes), st.PatchedFiles, mib(st.PatchedBytes), st.DictFiles,
		st.RawFiles, mib(st.RawBytes), st.Groups, kib(st.PatchBytes), mib(st.MetaBytes), kib(st.MetaSize), kib(st.OpsSize), mib(r.heapPeak), r.apply.Wall.Round(time.Millisecond), mib(r.apply.RSS))
	return r, nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
func kib(n int64) string { return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10)) }

func printTable(w io.Writer, rows []row) {
	fmt.Fprintln(w, "| pair | new tar | gzip | largest changed file | layerdelta | time | peak RSS | bsdiff | time | peak RSS | xdelta3 -9 | time | peak RSS | zstd -19 --long=31 --patch-from | time | peak RSS |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | **%s** | %s | %s |", r.name, mib(r.tarSize), mib(r.gz), mib(r.largest), size(r.ours.Size), secs(r.ours.Wall), mib(r.ours.RSS))
		for _, t := range toolNames {
			tr, ok := r.tools[t]
			if !ok || tr.Err != "" {
				fmt.Fprint(w, " – | – | – |")
				continue
			}
			fmt.Fprintf(w, " %s | %s | %s |", size(tr.Size), secs(tr.Wall), mib(tr.RSS))
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| pair | delta / best tool (goal ≤ 1.05) | time / bsdiff's (goal ≤ 0.25) | peak RSS / largest changed file (goal ≤ 10) | Go heap peak / largest changed file | apply (time, peak RSS) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, r := range rows {
		best := int64(-1)
		for _, t := range toolNames {
			if tr, ok := r.tools[t]; ok && tr.Err == "" && (best < 0 || tr.Size < best) {
				best = tr.Size
			}
		}
		bs, ok := r.tools["bsdiff"]
		sizeRatio, timeRatio := "–", "–"
		if best > 0 {
			sizeRatio = goal(float64(r.ours.Size)/float64(best), 1.05)
		}
		if ok && bs.Err == "" {
			timeRatio = goal(r.ours.Wall.Seconds()/bs.Wall.Seconds(), 0.25)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %.1f | %s, %s |\n", r.name, sizeRatio, timeRatio,
			goal(float64(r.ours.RSS)/float64(r.largest), 10), float64(r.heapPeak)/float64(r.largest),
			secs(r.apply.Wall), mib(r.apply.RSS))
	}
}

func goal(v, limit float64) string {
	if v <= limit {
		return fmt.Sprintf("%.2f ✓", v)
	}
	return fmt.Sprintf("%.2f ✗", v)
}

func size(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

// largestChanged returns the size of the largest file of the new tar whose
// content differs from the file at its path in the old tar (new files
// included), the larger of its two versions.
func largestChanged(oldP, newP string) (int64, error) {
	type f struct {
		size int64
		sum  [32]byte
	}
	read := func(p string) (map[string]f, error) {
		fh, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		defer fh.Close()
		m := map[string]f{}
		tr := tar.NewReader(bufio.NewReader(fh))
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return m, nil
			}
			if err != nil {
				return nil, err
			}
			if h.Typeflag != tar.TypeReg {
				continue
			}
			s := sha256.New()
			n, err := io.Copy(s, tr)
			if err != nil {
				return nil, err
			}
			var e f
			e.size = n
			s.Sum(e.sum[:0])
			m[path.Clean(h.Name)] = e
		}
	}
	o, err := read(oldP)
	if err != nil {
		return 0, err
	}
	n, err := read(newP)
	if err != nil {
		return 0, err
	}
	var largest int64
	for name, nf := range n {
		of, ok := o[name]
		if ok && of.sum == nf.sum {
			continue
		}
		largest = max(largest, nf.size, of.size)
	}
	return largest, nil
}

// ---------------------------------------------------------------- child

type childReport struct {
	Stats    layerdelta.Stats
	HeapPeak int64
	Sum      string
}

// child runs "diff OLD NEW PATCH [flags]" or "apply OLD PATCH" and prints a
// JSON childReport.
func child(args []string) {
	fl := flag.NewFlagSet("child", flag.ExitOnError)
	level := fl.String("level", "", "")
	streamLevel := fl.String("stream-level", "", "")
	group := fl.Int64("group", 0, "")
	memprofile := fl.String("memprofile", "", "")
	mode, args := args[0], args[1:]
	if slices.Contains(args, "-memprofile") {
		runtime.MemProfileRate = 4 << 10
	}
	var pos []string
	for len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		pos, args = append(pos, args[0]), args[1:]
	}
	fl.Parse(args)
	lvl := func(s string) zstd.EncoderLevel {
		if s == "" {
			return 0
		}
		ok, l := zstd.EncoderLevelFromString(s)
		if !ok {
			log.Fatalf("level %q", s)
		}
		return l
	}
	old, err := os.Open(pos[0])
	if err != nil {
		log.Fatal(err)
	}
	fi, _ := old.Stat()
	layers := []layerdelta.Layer{{R: old, Size: fi.Size()}}
	ctx := context.Background()
	var rep childReport
	switch mode {
	case "diff":
		newF, err := os.Open(pos[1])
		if err != nil {
			log.Fatal(err)
		}
		out, err := os.Create(pos[2])
		if err != nil {
			log.Fatal(err)
		}
		stop := heapSampler(&rep.HeapPeak)
		bw := bufio.NewWriter(out)
		rep.Stats, err = layerdelta.Diff(ctx, layers, newF, bw, &layerdelta.Options{
			Level: lvl(*level), StreamLevel: lvl(*streamLevel), MaxGroup: *group,
		})
		stop()
		if *memprofile != "" {
			// The profile is as of the last collection: run one so
			// that it counts every allocation of Diff.
			runtime.GC()
			mf, _ := os.Create(*memprofile)
			pprof.Lookup("allocs").WriteTo(mf, 0)
			mf.Close()
		}
		if err == nil {
			err = bw.Flush()
		}
		if err == nil {
			err = out.Close()
		}
		if err != nil {
			log.Fatal(err)
		}
	case "apply":
		p, err := os.Open(pos[1])
		if err != nil {
			log.Fatal(err)
		}
		h := sha256.New()
		if _, err := layerdelta.Apply(ctx, layers, bufio.NewReader(p), h); err != nil {
			log.Fatal(err)
		}
		rep.Sum = hex.EncodeToString(h.Sum(nil))
	}
	json.NewEncoder(os.Stdout).Encode(rep)
}

// heapSampler records the high-water mark of the Go heap's live and
// not-yet-swept objects, sampled every millisecond, until stop is called.
func heapSampler(peak *int64) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	go func() {
		defer close(finished)
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(s)
			*peak = max(*peak, int64(s[0].Value.Uint64()))
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	}()
	return func() { close(done); <-finished }
}

// ---------------------------------------------------------------- pairs

func buildPair(name, dir string) error {
	if fileSize(filepath.Join(dir, "new.tar")) > 0 && fileSize(filepath.Join(dir, "old.tar")) > 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	log.Printf("%s: building the pair in %s", name, dir)
	var oldFiles, newFiles map[string]file
	var err error
	switch name {
	case "npm":
		oldFiles, newFiles, err = npmPair(dir)
	case "gobin":
		oldFiles, newFiles, err = goBinPair(dir)
	case "gosrc":
		oldFiles, newFiles, err = goSrcPair()
	default:
		return fmt.Errorf("unknown pair %q (npm, gobin, gosrc)", name)
	}
	if err != nil {
		return err
	}
	if err := writeTar(filepath.Join(dir, "old.tar"), oldFiles); err != nil {
		return err
	}
	return writeTar(filepath.Join(dir, "new.tar"), newFiles)
}

type file struct {
	body []byte
	mode int64
}

// writeTar writes files as a layer: sorted paths, their parent directories
// first, fixed owner and times, as a reproducible image build would.
func writeTar(p string, files map[string]file) error {
	names := make([]string, 0, len(files))
	dirs := map[string]bool{}
	for n := range files {
		names = append(names, n)
		for d := path.Dir(n); d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for d := range dirs {
		names = append(names, d+"/")
	}
	slices.Sort(names)
	tmp := p + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(f)
	tw := tar.NewWriter(bw)
	for _, n := range names {
		h := &tar.Header{Name: n, ModTime: epoch, Format: tar.FormatPAX, Uname: "root", Gname: "root"}
		if strings.HasSuffix(n, "/") {
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		} else {
			fl := files[n]
			h.Typeflag, h.Mode, h.Size = tar.TypeReg, fl.mode, int64(len(fl.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(files[n].body); err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// npmPair: an app's node_modules at two sets of versions.
func npmPair(dir string) (map[string]file, map[string]file, error) {
	same := []string{"react-dom@18.3.1", "react@18.3.1", "lodash@4.17.21", "date-fns@3.6.0", "rxjs@7.8.1", "uuid@10.0.0", "commander@12.1.0"}
	bumps := [][2]string{
		{"typescript@5.6.2", "typescript@5.6.3"},
		{"axios@1.7.7", "axios@1.7.8"},
		{"express@4.21.1", "express@4.21.2"},
		{"zod@3.23.7", "zod@3.23.8"},
	}
	var oldSpecs, newSpecs []string
	oldSpecs = append(oldSpecs, same...)
	newSpecs = append(newSpecs, same...)
	for _, b := range bumps {
		oldSpecs = append(oldSpecs, b[0])
		newSpecs = append(newSpecs, b[1])
	}
	tgz := filepath.Join(dir, "npm")
	os.MkdirAll(tgz, 0o755)
	layer := func(specs []string) (map[string]file, error) {
		files := map[string]file{}
		deps := map[string]string{}
		for _, spec := range specs {
			i := strings.LastIndexByte(spec, '@')
			pkg, ver := spec[:i], spec[i+1:]
			deps[pkg] = ver
			fn := filepath.Join(tgz, strings.ReplaceAll(strings.TrimPrefix(pkg, "@"), "/", "-")+"-"+ver+".tgz")
			if fileSize(fn) <= 0 {
				cmd := exec.Command("npm", "pack", "--silent", "--pack-destination", tgz, spec)
				if out, err := cmd.CombinedOutput(); err != nil {
					return nil, fmt.Errorf("npm pack %s: %v: %s", spec, err, out)
				}
			}
			if err := untgz(fn, "app/node_modules/"+pkg+"/", files); err != nil {
				return nil, fmt.Errorf("%s: %v", fn, err)
			}
		}
		pj, _ := json.MarshalIndent(map[string]any{"name": "app", "version": "1.0.0", "private": true, "dependencies": deps}, "", "  ")
		files["app/package.json"] = file{append(pj, '\n'), 0o644}
		files["app/server.js"] = file{[]byte("const express = require('express');\nconst app = express();\napp.get('/', (req, res) => res.send('ok'));\napp.listen(3000);\n"), 0o644}
		return files, nil
	}
	o, err := layer(oldSpecs)
	if err != nil {
		return nil, nil, err
	}
	n, err := layer(newSpecs)
	return o, n, err
}

func untgz(fn, prefix string, files map[string]file) error {
	f, err := os.Open(fn)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		// npm tarballs put everything under one top directory ("package/").
		name := path.Clean(h.Name)
		if i := strings.IndexByte(name, '/'); i >= 0 {
			name = name[i+1:]
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		mode := int64(0o644)
		if h.Mode&0o111 != 0 {
			mode = 0o755
		}
		files[prefix+name] = file{b, mode}
	}
}

// goBinPair: programs of golang.org/x/tools built at two versions.
func goBinPair(dir string) (map[string]file, map[string]file, error) {
	progs := []string{"stringer", "goimports", "callgraph", "deadcode", "digraph"}
	build := func(version string) (map[string]file, error) {
		bin := filepath.Join(dir, "bin-"+version)
		files := map[string]file{}
		for _, p := range progs {
			exe := filepath.Join(bin, p)
			if fileSize(exe) <= 0 {
				cmd := exec.Command("go", "install", "-trimpath", "-ldflags=-s -w", "golang.org/x/tools/cmd/"+p+"@"+version)
				cmd.Env = append(os.Environ(), "GOBIN="+bin, "GOPATH="+filepath.Join(dir, "gopath"),
					"GOFLAGS=-modcacherw", "CGO_ENABLED=0", "GOTOOLCHAIN=local")
				if out, err := cmd.CombinedOutput(); err != nil {
					return nil, fmt.Errorf("go install %s@%s: %v: %s", p, version, err, out)
				}
			}
			b, err := os.ReadFile(exe)
			if err != nil {
				return nil, err
			}
			files["usr/local/bin/"+p] = file{b, 0o755}
		}
		files["etc/tools-version"] = file{[]byte(version + "\n"), 0o644}
		return files, nil
	}
	o, err := build("v0.29.0")
	if err != nil {
		return nil, nil, err
	}
	n, err := build("v0.30.0")
	return o, n, err
}

// goSrcPair: GOROOT/src/cmd, and a copy with a few percent of the files
// edited, some removed, some added.
func goSrcPair() (map[string]file, map[string]file, error) {
	root := filepath.Join(runtime.GOROOT(), "src", "cmd")
	old := map[string]file{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		old["usr/local/go/src/cmd/"+filepath.ToSlash(rel)] = file{b, 0o644}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if len(old) == 0 {
		return nil, nil, errors.New("no files under " + root)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range old {
			if !yield(k) {
				return
			}
		}
	})
	h := func(s string) uint64 { f := fnv.New64a(); f.Write([]byte(s)); return f.Sum64() }
	newFiles := map[string]file{}
	var edited, removed, added int
	for _, n := range names {
		f := old[n]
		switch v := h(n) % 1000; {
		case v < 30: // ~3% edited
			newFiles[n] = file{editBody(f.body, h(n)), f.mode}
			edited++
		case v < 32: // ~0.2% removed
			removed++
		case v < 34: // ~0.2% copied under a new name, lightly edited
			newFiles[n] = f
			dir, base := path.Split(n)
			newFiles[dir+"new_"+base] = file{editBody(f.body, h(n)+1), f.mode}
			added++
		default:
			newFiles[n] = f
		}
	}
	log.Printf("gosrc: %d files, %d edited, %d removed, %d added", len(old), edited, removed, added)
	return old, newFiles, nil
}

// editBody makes a few edits the way a source change does: lines inserted,
// a word replaced, a line removed.
func editBody(b []byte, seed uint64) []byte {
	lines := bytes.SplitAfter(b, []byte("\n"))
	if len(lines) < 4 {
		return append(append([]byte(nil), b...), fmt.Sprintf("// edit %d\n", seed)...)
	}
	out := make([][]byte, 0, len(lines)+4)
	for i, l := range lines {
		switch (uint64(i)*0x9e3779b97f4a7c15 ^ seed) % 97 {
		case 0:
			out = append(out, []byte(fmt.Sprintf("\t// changed in this release (%x)\n", seed>>40)), l)
		case 1:
			out = append(out, bytes.ReplaceAll(l, []byte("err"), []byte("failure")))
		case 2:
			// removed
		default:
			out = append(out, l)
		}
	}
	return bytes.Join(out, nil)
}
