package builder_test

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"

	"github.com/flock-io/flock-api/internal/registry/registrytest"
	"github.com/flock-io/flock-api/internal/testutil/launch"
)

// TestTwoBuildersShareTheQueue runs a second builder replica, a process
// of its own on the same database, registry and S3 store, and builds a
// project of several services: every image is built once (one claim, one
// "building" line), whichever replica took it.
func TestTwoBuildersShareTheQueue(t *testing.T) {
	s3 := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	t.Cleanup(s3.Close)
	reg := registrytest.Distribution(t)
	shared := []string{"--registry-url=" + reg, "--registry-username=" + registrytest.RobotUser,
		"--registry-password=" + registrytest.RobotPassword, "--s3-endpoint=" + s3.URL,
		"--s3-access-key=test", "--s3-secret-key=test"}
	e := setup(t, shared...)
	second, err := launch.Start(append([]string{"--target=builder", "--dev", "--database-url=" + e.srv.DatabaseURL,
		"--public-url=" + e.srv.PublicURL, "--data-dir=" + t.TempDir()}, shared...), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if code, err := second.Stop(15e9); err != nil || code != 0 {
			t.Errorf("second builder stopped with %d (%v)", code, err)
		}
	})

	files := map[string]string{}
	var compose strings.Builder
	compose.WriteString("services:\n")
	const n = 6
	for i := range n {
		fmt.Fprintf(&compose, "  s%d:\n    build: s%d\n", i, i)
		files[fmt.Sprintf("s%d/Dockerfile", i)] = "FROM scratch\nCOPY f /\n"
		files[fmt.Sprintf("s%d/f", i)] = fmt.Sprintf("service %d\n", i)
	}
	files["compose.yaml"] = compose.String()
	code, b := e.upload(t, "", project(t, files))
	if code != 202 {
		t.Fatalf("upload = %d: %v", code, b)
	}
	id := b["id"].(string)
	b = e.wait(t, id)
	if b["status"] != "succeeded" {
		t.Fatalf("build = %v\n%s", b, e.log(t, id))
	}
	rows, err := e.srv.Pool(t).Query(t.Context(), "SELECT service, attempts, holder IS NULL FROM build_images WHERE build_id = $1", id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := 0
	for rows.Next() {
		var svc string
		var attempts int32
		var released bool
		if err := rows.Scan(&svc, &attempts, &released); err != nil {
			t.Fatal(err)
		}
		seen++
		if attempts != 1 || !released {
			t.Fatalf("%s: claimed %d times (released %v), want once", svc, attempts, released)
		}
	}
	if seen != n {
		t.Fatalf("images = %d, want %d", seen, n)
	}
	log := e.log(t, id)
	holders := map[string]bool{}
	for i := range n {
		if c := strings.Count(log, fmt.Sprintf("building s%d for amd64 on ", i)); c != 1 {
			t.Fatalf("s%d built %d times:\n%s", i, c, log)
		}
	}
	for _, l := range strings.Split(log, "\n") {
		if _, rest, ok := strings.Cut(l, " for amd64 on "); ok {
			holders[strings.Fields(rest)[0]] = true
		}
	}
	t.Logf("images built by %d replicas", len(holders))
}
