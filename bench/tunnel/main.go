// Command tunnel measures remote access over the WireGuard overlay:
// flock-api runs with --target=all in this process (its tunnel replica's
// userspace WireGuard on netstack, the proxy, the API) and a simulated
// device keeps its tunnel up with wireguard-go on its own netstack, both
// ends talking UDP over loopback. It reports:
//
//   - throughput of one large download (default 100 MB) from the device's
//     web server through the proxy (the public URL path) and through the
//     API's tunnel WebSocket (what `flock-api tunnel` and ssh use), against
//     the same download from the same kind of server over plain loopback
//     TCP (ratio);
//   - the round-trip latency a tunnel adds: small HTTP requests through the
//     proxy and one-byte echoes through the tunnel WebSocket, against the
//     same over loopback TCP (medians and p99).
//
// Memory per idle peer and handshakes per second one replica accepts are
// the benchmarks of internal/wgtunnel (go test -bench . ./internal/wgtunnel).
//
// go run ./bench/tunnel [-mb 100] [-rtts 500]
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/flock-io/flock-api/bench/internal/benchapp"
	"github.com/flock-io/flock-api/bench/internal/benchdb"
	"github.com/flock-io/flock-api/internal/simulate"
	"github.com/flock-io/flock-api/internal/testutil/launch"
	"github.com/flock-io/flock-api/internal/tunnelcli"
)

// publicURL names the deployment; its host is where registration tells
// the device the tunnel endpoint is, so it must be this machine.
const publicURL = "http://127.0.0.1:9"

const domain = "devices.bench.test"

func main() {
	admin := flag.String("database-url", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", "PostgreSQL server to create the benchmark database on")
	mb := flag.Int("mb", 100, "size of the download, in MB")
	rtts := flag.Int("rtts", 500, "round trips for each latency figure")
	flag.Parse()
	if err := run(*admin, *mb, *rtts); err != nil {
		fmt.Fprintln(os.Stderr, "bench/tunnel:", err)
		os.Exit(1)
	}
}

func run(adminURL string, mb, rtts int) error {
	ctx := context.Background()
	dbURL, pool, done, err := benchdb.Migrated(ctx, adminURL)
	if err != nil {
		return err
	}
	defer done()
	dataDir, err := os.MkdirTemp("", "flock-bench-tunnel-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)
	proxyAddr, err := freeAddr()
	if err != nil {
		return err
	}
	proc, err := launch.Start([]string{"--database-url=" + dbURL, "--dev", "--target=all", "--public-url=" + publicURL,
		"--data-dir=" + dataDir, "--proxy-addr=" + proxyAddr, "--device-url-domain=" + domain}, func(line string) {
		// Errors only; /readyz answers 503 while the process starts.
		if strings.Contains(line, `"level":"ERROR"`) && !strings.Contains(line, `not_ready`) {
			fmt.Fprintln(os.Stderr, line)
		}
	})
	if err != nil {
		return err
	}
	defer proc.Stop(30 * time.Second) //nolint:errcheck
	token, err := benchapp.Token(ctx, pool, publicURL)
	if err != nil {
		return err
	}
	api := &apiClient{base: proc.URL, token: token}
	org, err := api.do("POST", "/v1/orgs", map[string]any{"name": "bench"})
	if err != nil {
		return err
	}
	fleet, err := api.do("POST", "/v1/orgs/"+org["id"].(string)+"/fleets", map[string]any{"name": "fleet", "architecture": "amd64"})
	if err != nil {
		return err
	}
	key, err := api.do("POST", "/v1/fleets/"+fleet["id"].(string)+"/provisioning-keys", map[string]any{"name": "sim"})
	if err != nil {
		return err
	}

	// The baseline servers, on loopback TCP: the same download handler as
	// the device's, and a TCP echo the device also relays.
	direct, err := serve(downloads())
	if err != nil {
		return err
	}
	echoAddr, err := echoServer()
	if err != nil {
		return err
	}

	var last atomic.Pointer[simulate.Summary]
	simCtx, stopSim := context.WithCancel(ctx)
	simDone := make(chan error, 1)
	go func() {
		_, err := simulate.Run(simCtx, simulate.Config{API: proc.URL, ProvisioningKey: key["secret"].(string), Devices: 1,
			Tunnel: true, TunnelForward: map[uint16]string{7: echoAddr},
			SummaryEvery: 100 * time.Millisecond, Out: io.Discard, Log: slog.New(slog.DiscardHandler),
			OnSummary: func(s simulate.Summary) { last.Store(&s) }})
		simDone <- err
	}()
	defer func() { stopSim(); <-simDone }()
	deadline := time.Now().Add(time.Minute)
	for s := last.Load(); s == nil || s.Tunnels < 1; s = last.Load() {
		if time.Now().After(deadline) {
			return fmt.Errorf("the device's tunnel did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	devs, err := api.do("GET", "/v1/orgs/"+org["id"].(string)+"/devices", nil)
	if err != nil {
		return err
	}
	device := devs["items"].([]any)[0].(map[string]any)["id"].(string)
	if _, err := api.do("PATCH", "/v1/devices/"+device, map[string]any{"public_url": map[string]any{"enabled": true}}); err != nil {
		return err
	}
	topts := tunnelcli.Options{API: proc.URL, Token: token, Device: device}

	// The replica records the device at its first handshake: wait until
	// a tunnel opens.
	for {
		_, err := tcpRTT(func() (net.Conn, error) { return tunnelcli.Dial(ctx, withPort(topts, 7)) }, 1)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no tunnel to the device: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	size := int64(mb) * 1_000_000
	fmt.Printf("flock-api --target=all and one simulated device in one process, %d CPUs; WireGuard (wireguard-go, gVisor netstack) over loopback UDP\n\n", runtime.NumCPU())
	proxied := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", proxyAddr)
	}}}
	deviceURL := "http://" + device + "." + domain
	plain := &http.Client{}

	// Throughput: each path twice, the better run kept (the first warms
	// the connection and the TCP windows).
	best := func(f func() (time.Duration, error)) (time.Duration, error) {
		var b time.Duration
		for range 2 {
			d, err := f()
			if err != nil {
				return 0, err
			}
			if b == 0 || d < b {
				b = d
			}
		}
		return b, nil
	}
	tDirect, err := best(func() (time.Duration, error) {
		return download(plain, "http://"+direct+"/bytes?n="+strconv.FormatInt(size, 10), size)
	})
	if err != nil {
		return err
	}
	tProxy, err := best(func() (time.Duration, error) {
		return download(proxied, deviceURL+"/bytes?n="+strconv.FormatInt(size, 10), size)
	})
	if err != nil {
		return err
	}
	tTunnel, err := best(func() (time.Duration, error) { return tunnelDownload(ctx, withPort(topts, 80), size) })
	if err != nil {
		return err
	}
	rate := func(d time.Duration) float64 { return float64(size) / 1e6 / d.Seconds() }
	fmt.Printf("download of %d MB\n", mb)
	fmt.Printf("  loopback TCP (baseline)          %8.1f MB/s\n", rate(tDirect))
	fmt.Printf("  through the proxy (public URL)   %8.1f MB/s  ratio %.3f\n", rate(tProxy), tDirect.Seconds()/tProxy.Seconds())
	fmt.Printf("  through the tunnel WebSocket     %8.1f MB/s  ratio %.3f\n", rate(tTunnel), tDirect.Seconds()/tTunnel.Seconds())

	// Latency.
	httpDirect, err := httpRTT(plain, "http://"+direct+"/", rtts)
	if err != nil {
		return err
	}
	httpProxy, err := httpRTT(proxied, deviceURL+"/", rtts)
	if err != nil {
		return err
	}
	echoDirect, err := tcpRTT(func() (net.Conn, error) { return net.Dial("tcp", echoAddr) }, rtts)
	if err != nil {
		return err
	}
	echoTunnel, err := tcpRTT(func() (net.Conn, error) { return tunnelcli.Dial(ctx, withPort(topts, 7)) }, rtts)
	if err != nil {
		return err
	}
	fmt.Printf("\nround trips (%d each), median / p99\n", rtts)
	fmt.Printf("  HTTP GET, loopback TCP           %s / %s\n", httpDirect.p50, httpDirect.p99)
	fmt.Printf("  HTTP GET through the proxy       %s / %s   added %s\n", httpProxy.p50, httpProxy.p99, httpProxy.p50-httpDirect.p50)
	fmt.Printf("  1-byte echo, loopback TCP        %s / %s\n", echoDirect.p50, echoDirect.p99)
	fmt.Printf("  1-byte echo through the tunnel   %s / %s   added %s\n", echoTunnel.p50, echoTunnel.p99, echoTunnel.p50-echoDirect.p50)
	return nil
}

func withPort(o tunnelcli.Options, port int) tunnelcli.Options {
	o.Port = port
	return o
}

func download(c *http.Client, url string, size int64) (time.Duration, error) {
	start := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != size || resp.StatusCode != 200 {
		return 0, fmt.Errorf("GET %s: %d, %d of %d bytes, %v (%s)", url, resp.StatusCode, n, size, err, resp.Header.Get("X-Request-Id"))
	}
	return time.Since(start), nil
}

// tunnelDownload fetches the same download over a raw tunnel to the
// device's port 80, as ssh's bytes travel.
func tunnelDownload(ctx context.Context, o tunnelcli.Options, size int64) (time.Duration, error) {
	start := time.Now()
	c, err := tunnelcli.Dial(ctx, o)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /bytes?n=%d HTTP/1.1\r\nHost: device\r\nConnection: close\r\n\r\n", size)
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 64<<10), nil)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != size {
		return 0, fmt.Errorf("tunnel download: %d of %d bytes, %v", n, size, err)
	}
	return time.Since(start), nil
}

type quantiles struct{ p50, p99 time.Duration }

func quantilesOf(d []time.Duration) quantiles {
	slices.Sort(d)
	return quantiles{d[len(d)/2].Round(time.Microsecond), d[len(d)*99/100].Round(time.Microsecond)}
}

func httpRTT(c *http.Client, url string, n int) (quantiles, error) {
	var d []time.Duration
	for i := range n + 10 {
		start := time.Now()
		resp, err := c.Get(url)
		if err != nil {
			return quantiles{}, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if i >= 10 { // warm-up
			d = append(d, time.Since(start))
		}
	}
	return quantilesOf(d), nil
}

func tcpRTT(dial func() (net.Conn, error), n int) (quantiles, error) {
	c, err := dial()
	if err != nil {
		return quantiles{}, err
	}
	defer c.Close()
	b := []byte{'x'}
	var d []time.Duration
	warm := 10
	if n < 10 {
		warm = 0
	}
	for i := range n + warm {
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			return quantiles{}, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return quantiles{}, err
		}
		if i >= warm {
			d = append(d, time.Since(start))
		}
	}
	return quantilesOf(d), nil
}

// downloads serves what the simulated device's web server serves.
func downloads() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "loopback baseline") })
	mux.HandleFunc("GET /bytes", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		_, _ = io.CopyN(w, zeros{}, n)
	})
	return mux
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func serve(h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() { _ = http.Serve(ln, h) }()
	return ln.Addr().String(), nil
}

func echoServer() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String(), nil
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

type apiClient struct{ base, token string }

func (a *apiClient) do(method, path string, body any) (map[string]any, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, a.base+path, rd)
	req.Header.Set("Authorization", "Bearer "+a.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode/100 != 2 {
		return nil, fmt.Errorf("%s %s = %d: %v", method, path, resp.StatusCode, out)
	}
	return out, nil
}
