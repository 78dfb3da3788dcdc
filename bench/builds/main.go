// Command builds measures the builder (issue 15): a three-service project
// built through the platform from an empty layer cache and from a warm one,
// against the same builds run with `buildah bud` (and `buildah push`) by
// hand on the same machine; the time from upload to the draft release and
// to the final one; and the stored size of a 10,000-line build log.
//
// It starts flock-api in process (--target=api,registry-proxy,builder) on a
// fresh database with the embedded registry and S3 store, on a loopback
// port that is also its public URL (buildah follows the registry's token
// realm). The platform builds one image at a time (builder concurrency 1);
// the hand builds run one after another too. A cold platform build is the
// first build of a new fleet (each fleet has its own layer storage); a
// cold hand build uses a new storage directory.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/flock-io/flock-api/bench/internal/benchapp"
	"github.com/flock-io/flock-api/bench/internal/benchdb"
	"github.com/flock-io/flock-api/internal/testutil/launch"
)

func main() {
	admin := flag.String("database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the run's database on")
	reps := flag.Int("reps", 3, "rounds of each measurement (the median is reported)")
	flag.BoolVar(&showLog, "log", false, "print the last warm build's log (where the time goes)")
	flag.Parse()
	if err := run(context.Background(), *admin, *reps); err != nil {
		fmt.Fprintln(os.Stderr, "bench/builds:", err)
		os.Exit(1)
	}
}

var showLog bool

type env struct {
	url, host, token, org string
}

func run(ctx context.Context, admin string, reps int) error {
	dbURL, pool, done, err := benchdb.Migrated(ctx, admin)
	if err != nil {
		return err
	}
	defer done()
	tmp, err := os.MkdirTemp("", "flock-bench-builds-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	p, err := launch.Start([]string{"--target=api,registry-proxy,builder", "--dev", "--database-url=" + dbURL,
		"--http-addr=" + addr, "--public-url=http://" + addr, "--data-dir=" + filepath.Join(tmp, "data"),
		"--shutdown-grace=5s"}, nil)
	if err != nil {
		return err
	}
	defer p.Stop(30 * time.Second)
	tok, err := benchapp.Token(ctx, pool, "http://"+addr)
	if err != nil {
		return err
	}
	e := &env{url: p.URL, host: addr, token: tok}
	org, err := e.json("POST", "/v1/orgs", map[string]any{"name": "Bench Builds"})
	if err != nil {
		return err
	}
	e.org = org["id"].(string)
	slug := org["slug"].(string)
	baseRepo := slug + "/base/busybox"
	if _, err := e.json("POST", "/v1/orgs/"+e.org+"/fleets", map[string]any{"name": "base", "architecture": "amd64"}); err != nil {
		return err
	}
	base, err := e.pushBase(baseRepo)
	if err != nil {
		return err
	}
	files := projectFiles(base)
	src := filepath.Join(tmp, "project")
	for p, c := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(src, p)), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(src, p), []byte(c), 0o644); err != nil {
			return err
		}
	}
	tarball := tarOf(files)

	var cold, warm, handCold, handWarm, toDraft []time.Duration
	for i := range reps {
		fleet, err := e.json("POST", "/v1/orgs/"+e.org+"/fleets", map[string]any{"name": fmt.Sprintf("bench %d", i), "architecture": "amd64"})
		if err != nil {
			return err
		}
		for _, list := range []*[]time.Duration{&cold, &warm} {
			d, draft, b, err := e.build(fleet["id"].(string), tarball)
			if err != nil {
				return err
			}
			if showLog && list == &warm && i == reps-1 {
				if err := e.printLog(b["id"].(string)); err != nil {
					return err
				}
			}
			*list = append(*list, d)
			toDraft = append(toDraft, draft)
		}
		root := filepath.Join(tmp, fmt.Sprintf("hand-%d", i))
		for _, list := range []*[]time.Duration{&handCold, &handWarm} {
			d, err := e.byHand(root, src, slug+"/"+fleet["slug"].(string))
			if err != nil {
				return err
			}
			*list = append(*list, d)
		}
		fmt.Fprintf(os.Stderr, "round %d: platform %s / %s, by hand %s / %s\n", i+1, cold[i].Round(time.Millisecond),
			warm[i].Round(time.Millisecond), handCold[i].Round(time.Millisecond), handWarm[i].Round(time.Millisecond))
	}

	fleet, err := e.json("POST", "/v1/orgs/"+e.org+"/fleets", map[string]any{"name": "log", "architecture": "amd64"})
	if err != nil {
		return err
	}
	_, _, b, err := e.build(fleet["id"].(string), tarOf(map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN seq 1 10000\n"}))
	if err != nil {
		return err
	}

	fmt.Println("| measurement | platform (median) | buildah by hand (median) | platform / by hand (goal ≤ 1.15) |")
	fmt.Println("|---|---|---|---|")
	fmt.Printf("| three services, empty cache | %s | %s | %.2f |\n", med(cold), med(handCold), ratio(cold, handCold))
	fmt.Printf("| three services, warm cache | %s | %s | %.2f |\n", med(warm), med(handWarm), ratio(warm, handWarm))
	fmt.Printf("\nupload to draft release (the 202 of POST /builds): median %s over %d uploads of %d bytes\n", med(toDraft), len(toDraft), len(tarball))
	fmt.Printf("upload to final release: median %s (empty cache), %s (warm)\n", med(cold), med(warm))
	fmt.Printf("10,000-line build log: %v lines, %v bytes as text, %v bytes stored (gzip)\n", b["log_lines"], b["log_bytes"], b["log_stored_bytes"])
	fmt.Printf("\n%d CPUs; load average %s\n", runtime.NumCPU(), loadAvg())
	return nil
}

// build uploads a project and waits for its end; it returns the time to
// the end, the time to the 202 (the draft release exists then) and the
// ended build.
func (e *env) build(fleet string, body []byte) (time.Duration, time.Duration, map[string]any, error) {
	start := time.Now()
	req, _ := http.NewRequest("POST", e.url+"/v1/fleets/"+fleet+"/builds", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e.token)
	req.Header.Set("Content-Type", "application/x-tar")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, nil, err
	}
	var b map[string]any
	err = json.NewDecoder(resp.Body).Decode(&b)
	resp.Body.Close()
	draft := time.Since(start)
	if err != nil || resp.StatusCode != 202 {
		return 0, 0, nil, fmt.Errorf("upload = %d: %v %v", resp.StatusCode, b, err)
	}
	id := b["id"].(string)
	for b["finished_at"] == nil {
		time.Sleep(50 * time.Millisecond)
		if b, err = e.json("GET", "/v1/builds/"+id, nil); err != nil {
			return 0, 0, nil, err
		}
	}
	took := time.Since(start)
	if b["status"] != "succeeded" {
		return 0, 0, nil, fmt.Errorf("build %s: %v", id, b)
	}
	return took, draft, b, nil
}

// byHand builds and pushes the project's services with the buildah CLI
// as a developer would, with the same flags the builder uses.
func (e *env) byHand(root, src, repo string) (time.Duration, error) {
	auth := filepath.Join(root, "auth.json")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return 0, err
	}
	a, _ := json.Marshal(map[string]any{"auths": map[string]any{e.host: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte("x:" + e.token))}}})
	if err := os.WriteFile(auth, a, 0o600); err != nil {
		return 0, err
	}
	g := []string{"--root", filepath.Join(root, "root"), "--runroot", filepath.Join(root, "run"), "--storage-driver", "vfs"}
	start := time.Now()
	for _, s := range []string{"api", "worker", "web"} {
		tag := "localhost/bench/" + s
		bud := append(slices.Clone(g), "bud", "--isolation", "chroot", "--layers", "--format", "oci", "--pull=missing",
			"--authfile", auth, "--tls-verify=false", "--platform", "linux/amd64", "-t", tag, filepath.Join(src, s))
		if out, err := exec.Command("buildah", bud...).CombinedOutput(); err != nil {
			return 0, fmt.Errorf("buildah bud %s: %v\n%s", s, err, out)
		}
		push := append(slices.Clone(g), "push", "--authfile", auth, "--tls-verify=false", "--format", "oci", tag,
			"docker://"+e.host+"/"+repo+"/"+s+":hand")
		if out, err := exec.Command("buildah", push...).CombinedOutput(); err != nil {
			return 0, fmt.Errorf("buildah push %s: %v\n%s", s, err, out)
		}
	}
	return time.Since(start), nil
}

func (e *env) printLog(id string) error {
	req, _ := http.NewRequest("GET", e.url+"/v1/builds/"+id+"/log", nil)
	req.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(os.Stderr, resp.Body)
	return err
}

func projectFiles(base string) map[string]string {
	f := map[string]string{"compose.yaml": "services:\n  api:\n    build: api\n  worker:\n    build: worker\n  web:\n    build: web\n"}
	for i, s := range []string{"api", "worker", "web"} {
		f[s+"/Dockerfile"] = "FROM " + base + "\n" +
			"RUN mkdir -p /opt/" + s + " && for i in $(seq 1 3000); do echo \"" + s + " $i\"; done > /opt/" + s + "/data && wc -l /opt/" + s + "/data\n" +
			"COPY . /app\n" +
			"RUN sha256sum /app/* > /opt/" + s + "/sums && cat /opt/" + s + "/sums\n"
		f[s+"/main.sh"] = strings.Repeat(fmt.Sprintf("echo service %d\n", i), 200)
		f[s+"/config.txt"] = strings.Repeat(s+" config\n", 100)
	}
	return f
}

func tarOf(files map[string]string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for p, c := range files {
		tw.WriteHeader(&tar.Header{Name: p, Mode: 0o644, Size: int64(len(c)), Typeflag: tar.TypeReg})
		tw.Write([]byte(c))
	}
	tw.Close()
	return buf.Bytes()
}

// pushBase pushes a busybox image made from the host's busybox-static.
func (e *env) pushBase(repo string) (string, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", fmt.Errorf("busybox-static: %w (scripts/services.sh builder-tools installs it)", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))})
	tw.Write(bb)
	for _, a := range []string{"sh", "echo", "seq", "cat", "wc", "mkdir", "sha256sum", "true", "ls"} {
		tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	tw.WriteHeader(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777})
	tw.Close()
	raw := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })
	if err != nil {
		return "", err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return "", err
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Env = []string{"PATH=/bin"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return "", err
	}
	ref, err := name.NewTag(e.host+"/"+repo+":latest", name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "x", Password: e.token})); err != nil {
		return "", fmt.Errorf("push base: %w", err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return e.host + "/" + repo + "@" + d.String(), nil
}

func (e *env) json(method, path string, body any) (map[string]any, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.url+path, rd)
	req.Header.Set("Authorization", "Bearer "+e.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("%s %s = %d: %w", method, path, resp.StatusCode, err)
	}
	if resp.StatusCode >= 300 {
		return nil, fmt.Errorf("%s %s = %d: %v", method, path, resp.StatusCode, out)
	}
	return out, nil
}

func med(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2].Round(time.Millisecond)
}

func ratio(a, b []time.Duration) float64 { return float64(med(a)) / float64(med(b)) }

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
