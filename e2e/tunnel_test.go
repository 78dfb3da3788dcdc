package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/flock-io/flock-api/internal/simulate"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

// remoteWorld is a deployment with remote access as production splits it:
// two tunnel replicas and one process running the api (with its broker)
// and the proxy, sharing PostgreSQL and Redis; devices simulated in this
// process with wireguard-go on netstack, each relaying overlay port 22 to
// a real sshd on loopback.
type remoteWorld struct {
	bin      string
	apiBase  string
	proxy    string
	token    string
	org      string
	fleet    string
	provKey  string
	sshd     *sshd
	replicas [2]*process
	udp      [2]string
}

func newRemoteWorld(t *testing.T) *remoteWorld {
	t.Helper()
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Fatal("ssh is not installed: scripts/services.sh ssh-tools installs it")
	}
	w := &remoteWorld{bin: build(t)}
	dbURL := pgtest.EmptyURL(t)
	if out, err := exec.Command(w.bin, "migrate", "up", "--database-url", dbURL).CombinedOutput(); err != nil {
		t.Fatalf("migrate up: %v\n%s", err, out)
	}
	issuer, mint := externalIssuer(t, dbURL)
	shared := []string{
		"FLOCK_DATABASE_URL=" + dbURL,
		"FLOCK_PUBLIC_URL=http://flock-remote.test",
		"FLOCK_OIDC_ISSUER=" + issuer,
		"FLOCK_OIDC_AUDIENCE=flock-e2e",
		"FLOCK_REDIS_URL=redis://127.0.0.1:6379/0",
		"FLOCK_INTERNAL_TOKEN=e2e-internal-secret",
		"FLOCK_LOG_FORMAT=json",
	}
	for i := range w.replicas {
		name := fmt.Sprintf("tunnel-%c", 'a'+i)
		p := startProcess(t, name, w.bin, []string{"--target=tunnel", "--http-addr=127.0.0.1:0", "--tunnel-listen=127.0.0.1:0",
			"--tunnel-replica=" + name + "-" + randomHex(t), "--data-dir=" + t.TempDir()}, shared)
		w.replicas[i] = p
		w.udp[i] = "127.0.0.1:" + p.waitLog(t, "tunnel replica listening", "udp_port")
		waitReady(t, p, "http://"+p.waitLog(t, "http server listening", "addr"))
	}
	// Registration names replica a; the test moves some devices to b.
	api := startProcess(t, "api", w.bin, []string{"--target=api,ingester,proxy", "--http-addr=127.0.0.1:0", "--mqtt-listen=127.0.0.1:0",
		"--proxy-addr=127.0.0.1:0", "--device-url-domain=devices.e2e.test", "--tunnel-endpoint=" + w.udp[0],
		"--data-dir=" + t.TempDir()}, shared)
	w.apiBase = "http://" + api.waitLog(t, "http server listening", "addr")
	w.proxy = api.waitLog(t, "proxy listening", "addr")
	waitReady(t, api, w.apiBase)

	w.token = mint("ops@example.com")
	org := w.must(t, 201, "POST", "/v1/orgs", map[string]any{"name": "Remote"})
	w.org = org["id"].(string)
	w.fleet = w.must(t, 201, "POST", "/v1/orgs/"+w.org+"/fleets", map[string]any{"name": "gateways", "architecture": "amd64"})["id"].(string)
	w.provKey = w.must(t, 201, "POST", "/v1/fleets/"+w.fleet+"/provisioning-keys", map[string]any{"name": "sim"})["secret"].(string)
	w.sshd = startSSHD(t)
	return w
}

// must sends a JSON request with the test's token.
func (w *remoteWorld) must(t *testing.T, want int, method, path string, body any) map[string]any {
	t.Helper()
	status, out := w.do(t, method, path, body)
	if status != want {
		t.Fatalf("%s %s = %d, want %d: %v", method, path, status, want, out)
	}
	return out
}

func (w *remoteWorld) do(t *testing.T, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, w.apiBase+path, rd)
	req.Header.Set("Authorization", "Bearer "+w.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// audited returns the organisation's audit events of operation.
func (w *remoteWorld) audited(t *testing.T, operation string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, it := range w.must(t, 200, "GET", "/v1/orgs/"+w.org+"/audit-events?limit=500", nil)["items"].([]any) {
		if ev := it.(map[string]any); ev["operation"] == operation {
			out = append(out, ev)
		}
	}
	return out
}

// devices runs n simulated devices with tunnels, sending WireGuard to
// endpoint ("" = the one registration names), until the test ends, and
// returns their ids once every tunnel is up.
func (w *remoteWorld) devices(t *testing.T, name string, n int, endpoint string, tunnel bool) []string {
	t.Helper()
	var last atomic.Pointer[simulate.Summary]
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := simulate.Run(ctx, simulate.Config{API: w.apiBase, ProvisioningKey: w.provKey, Devices: n, Name: name,
			SummaryEvery: 100 * time.Millisecond, Tunnel: tunnel, TunnelEndpoint: endpoint,
			TunnelForward: map[uint16]string{22: w.sshd.addr},
			OnSummary:     func(s simulate.Summary) { last.Store(&s) }, Log: slog.New(slog.DiscardHandler)})
		done <- err
	}()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("simulate %s: %v", name, err)
		}
	})
	testutil.Eventually(t, name+" devices registered (and their tunnels up)", func() error {
		s := last.Load()
		switch {
		case s == nil:
			return errors.New("no summary yet")
		case s.Registered < int64(n):
			return fmt.Errorf("%d of %d registered", s.Registered, n)
		case tunnel && s.Tunnels < int64(n):
			return fmt.Errorf("%d of %d tunnels up", s.Tunnels, n)
		}
		return nil
	})
	var ids []string
	page := w.must(t, 200, "GET", "/v1/orgs/"+w.org+"/devices?name_prefix="+name+"-", nil)
	for _, it := range page["items"].([]any) {
		ids = append(ids, it.(map[string]any)["id"].(string))
	}
	if len(ids) != n {
		t.Fatalf("%d %s devices listed, want %d", len(ids), name, n)
	}
	return ids
}

// ssh runs the OpenSSH client against device through `flock-api tunnel`
// as its ProxyCommand.
func (w *remoteWorld) ssh(t *testing.T, device string, args ...string) (string, error) {
	t.Helper()
	all := append(w.sshd.clientArgs(w.bin, w.apiBase), w.sshd.user+"@"+device)
	cmd := exec.Command("ssh", append(all, args...)...)
	cmd.Env = append(os.Environ(), "FLOCK_TOKEN="+w.token)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestRemoteAccessEndToEnd drives remote access as users meet it: SSH
// command execution and scp through the tunnel with the OpenSSH client,
// to devices held by either of two tunnel replicas (the api reaches each
// through its holder over the internal plane); a closed port and an
// offline device refused with a clear reason; the public URL through the
// proxy (HTTP, a WebSocket echo, the error page of a disabled or unknown
// device); the session record and audit; and a deleted device's peer
// removed from its replica.
func TestRemoteAccessEndToEnd(t *testing.T) {
	w := newRemoteWorld(t)
	onA := w.devices(t, "alpha", 1, "", true)[0]
	onB := w.devices(t, "beta", 1, w.udp[1], true)[0]
	testutil.Eventually(t, "each replica holds its device", func() error {
		for i, want := range []float64{1, 1} {
			if got := metric(t, w.replicas[i], "flock_tunnel_peers"); got != want {
				return fmt.Errorf("replica %d holds %v peers, want %v", i, got, want)
			}
		}
		return nil
	})

	// A replica records the device it holds once it sees the handshake
	// complete (it looks every second): until then the device is offline.
	for _, dev := range []string{onA, onB} {
		testutil.Eventually(t, "ssh to "+dev, func() error {
			out, err := w.ssh(t, dev, "echo", "hello from", "the device")
			if err != nil || strings.TrimSpace(out) != "hello from the device" {
				return fmt.Errorf("ssh %s: %v\n%s", dev, err, out)
			}
			return nil
		})
	}

	// scp a file there and back through the device held by replica b.
	payload := make([]byte, 3<<20)
	_, _ = rand.Read(payload)
	dir := t.TempDir()
	src := filepath.Join(dir, "payload.bin")
	if err := os.WriteFile(src, payload, 0o600); err != nil {
		t.Fatal(err)
	}
	remote := filepath.Join(dir, "on-device.bin")
	scp := exec.Command("scp", append(w.sshd.clientArgs(w.bin, w.apiBase), src, w.sshd.user+"@"+onB+":"+remote)...)
	scp.Env = append(os.Environ(), "FLOCK_TOKEN="+w.token)
	if out, err := scp.CombinedOutput(); err != nil {
		t.Fatalf("scp: %v\n%s", err, out)
	}
	if got, err := os.ReadFile(remote); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("the copied file differs (%d bytes, %v)", len(got), err)
	}

	// A port nothing listens on, and a device without a tunnel: refused
	// with the reason, exit status 1.
	offline := w.devices(t, "gamma", 1, "", false)[0]
	for _, c := range []struct {
		device, port, want string
	}{
		{onA, "9", "port closed"},
		{offline, "22", "device offline"},
	} {
		cmd := exec.Command(w.bin, "tunnel", "--api", w.apiBase, "--device", c.device, "--port", c.port)
		cmd.Env = append(os.Environ(), "FLOCK_TOKEN="+w.token)
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), c.want) {
			t.Errorf("tunnel to %s port %s: %v, %q; want exit 1 saying %q", c.device, c.port, err, out, c.want)
		}
	}

	// The sessions are recorded with who, which port, how long and bytes,
	// and audited.
	sessions := w.must(t, 200, "GET", "/v1/devices/"+onB+"/tunnel-sessions", nil)["items"].([]any)
	var scpSession map[string]any
	for _, it := range sessions {
		s := it.(map[string]any)
		if s["port"].(float64) != 22 || s["actor_label"] != "ops@example.com" || s["ended_at"] == nil || s["outcome"] != "closed" {
			t.Errorf("session %v: want port 22 by ops@example.com, ended, closed", s)
		}
		if s["bytes_to_device"].(float64) > float64(len(payload)) {
			scpSession = s
		}
	}
	if len(sessions) != 2 || scpSession == nil {
		t.Fatalf("sessions of %s: %v; want the ssh one and the scp one (more than %d bytes to the device)", onB, sessions, len(payload))
	}
	if audit := w.audited(t, "device-tunnel:open"); len(audit) < 4 {
		t.Errorf("%d device-tunnel:open audit events, want one per session (4 or more): %v", len(audit), audit)
	}

	// The public URL: off by default, the same page as an unknown device.
	get := func(device, path string) (int, string) {
		req, _ := http.NewRequest("GET", "http://"+w.proxy+path, nil)
		req.Host = device + ".devices.e2e.test"
		req.Header.Set("X-Request-Id", "fixed")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	status, disabled := get(onA, "/")
	_, unknown := get("0b7d4c8e-52f4-4e4f-9d4a-3f9f5c0e2a11", "/")
	if status != http.StatusNotFound || disabled != unknown {
		t.Fatalf("disabled device: %d %q; want 404 and the unknown device's page %q", status, disabled, unknown)
	}
	for _, dev := range []string{onA, onB} {
		pu := w.must(t, 200, "PATCH", "/v1/devices/"+dev, map[string]any{"public_url": map[string]any{"enabled": true}})["public_url"].(map[string]any)
		if pu["enabled"] != true || pu["port"].(float64) != 80 || pu["url"] != "http://"+dev+".devices.e2e.test" {
			t.Errorf("public_url after enabling: %v", pu)
		}
		if status, body := get(dev, "/"); status != http.StatusOK || !strings.Contains(body, dev) {
			t.Errorf("GET / of %s through the proxy = %d %q", dev, status, body)
		}
	}
	if audit := w.audited(t, "device-public-url:enable"); len(audit) != 2 {
		t.Errorf("%d device-public-url:enable audit events, want 2", len(audit))
	}
	ctx := t.Context()
	ws, _, err := websocket.Dial(ctx, "ws://"+w.proxy+"/ws", &websocket.DialOptions{Host: onB + ".devices.e2e.test"})
	if err != nil {
		t.Fatalf("WebSocket through the proxy: %v", err)
	}
	for _, msg := range []string{"ping", strings.Repeat("x", 100_000)} {
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		ws.SetReadLimit(1 << 20)
		if _, got, err := ws.Read(ctx); err != nil || string(got) != msg {
			t.Fatalf("echo of %d bytes: %d bytes, %v", len(msg), len(got), err)
		}
	}
	_ = ws.Close(websocket.StatusNormalClosure, "")

	// A local port forward (--listen) to the device's web server.
	fwd := startProcess(t, "tunnel --listen", w.bin, []string{"tunnel", "--api", w.apiBase, "--device", onA, "--port", "80",
		"--listen", "127.0.0.1:0"}, []string{"FLOCK_TOKEN=" + w.token})
	var local string
	testutil.Eventually(t, "the forward to listen", func() error {
		for _, line := range fwd.log.all() {
			if rest, ok := strings.CutPrefix(line, "forwarding "); ok {
				local, _, _ = strings.Cut(rest, " ")
				return nil
			}
		}
		fwd.failIfExited(t, "its listening line")
		return errors.New("not listening yet")
	})
	// Each local connection is a tunnel of its own.
	noReuse := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for range 2 {
		resp, err := noReuse.Get("http://" + local + "/")
		if err != nil {
			t.Fatalf("GET through the local forward: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), onA) {
			t.Fatalf("GET through the local forward = %d %q", resp.StatusCode, body)
		}
	}
	fwd.stop(t)

	// Replica a dies (kill -9): it stops renewing its record, and within
	// its 15 s lease nothing routes to it; the device it held is offline
	// (until it handshakes elsewhere), refused at once, not hung.
	_ = w.replicas[0].cmd.Process.Kill()
	<-w.replicas[0].exited
	testutil.EventuallyWithin(t, time.Minute, "the dead replica's device reported offline", func() error {
		cmd := exec.Command(w.bin, "tunnel", "--api", w.apiBase, "--device", onA, "--port", "22")
		cmd.Env = append(os.Environ(), "FLOCK_TOKEN="+w.token)
		cmd.Stdin = strings.NewReader("")
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), "device offline") {
			return fmt.Errorf("tunnel to a device of the dead replica: %q", out)
		}
		return nil
	})
	if status, _ := get(onA, "/"); status != http.StatusBadGateway {
		t.Errorf("the public URL of a device of the dead replica = %d, want 502 (offline)", status)
	}

	// Deleting the device removes its peer from replica b at once.
	w.must(t, 204, "DELETE", "/v1/devices/"+onB, nil)
	testutil.Eventually(t, "the deleted device's peer removed", func() error {
		if got := metric(t, w.replicas[1], "flock_tunnel_peers"); got != 0 {
			return fmt.Errorf("replica b holds %v peers", got)
		}
		return nil
	})
	if status, _ := get(onB, "/"); status != http.StatusNotFound {
		t.Errorf("the deleted device's URL = %d, want 404", status)
	}
}

// metric reads a gauge or counter (without labels) from a process's
// /metrics.
func metric(t *testing.T, p *process, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + p.waitLog(t, "http server listening", "addr") + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			_, _ = fmt.Sscan(v, &f)
			return f
		}
	}
	return -1
}

func randomHex(t *testing.T) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}

// sshd is Debian's OpenSSH server on a loopback port with its own host
// key, accepting one client key for the user running the test: the
// simulated devices' SSH server.
type sshd struct {
	addr, user, key, knownHosts string
}

func startSSHD(t *testing.T) *sshd {
	t.Helper()
	bin := "/usr/sbin/sshd"
	if _, err := os.Stat(bin); err != nil {
		t.Fatal("sshd is not installed: scripts/services.sh ssh-tools installs it")
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"host", "client"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v\n%s", err, out)
		}
	}
	pub, err := os.ReadFile(filepath.Join(dir, "client.pub"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	cfg := fmt.Sprintf(`Port %s
ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PidFile %s
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
LogLevel ERROR
`, port, filepath.Join(dir, "host"), filepath.Join(dir, "authorized_keys"), filepath.Join(dir, "sshd.pid"))
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		_ = os.MkdirAll("/run/sshd", 0o755)
	}
	cmd := exec.Command(bin, "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	var log bytes.Buffer
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	testutil.Eventually(t, "sshd to listen", func() error {
		select {
		case err := <-exited:
			t.Fatalf("sshd exited: %v\n%s", err, log.String())
		default:
		}
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	hostPub, err := os.ReadFile(filepath.Join(dir, "host.pub"))
	if err != nil {
		t.Fatal(err)
	}
	// Devices are named by their ids, which ssh passes to the
	// ProxyCommand as %h; the host key is the one sshd holds.
	known := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(known, []byte("* "+string(hostPub)), 0o600); err != nil {
		t.Fatal(err)
	}
	return &sshd{addr: addr, user: u.Username, key: filepath.Join(dir, "client"), knownHosts: known}
}

// clientArgs are the OpenSSH client's options for reaching devices
// through `flock-api tunnel`.
func (s *sshd) clientArgs(bin, api string) []string {
	return []string{"-F", "/dev/null", "-i", s.key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + s.knownHosts,
		"-o", "ProxyCommand=" + bin + " tunnel --api " + api + " --device %h --port 22"}
}
