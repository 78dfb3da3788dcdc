package broker

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

const (
	// memoryGoal is what device fleets were promised: an idle connection
	// costs the broker at most 10 KB.
	memoryGoal = 10 << 10

	// memClientsEnv names, in the child process that holds the clients,
	// the file listing the broker's address and the devices to connect.
	memClientsEnv = "FLOCK_MQTT_MEM_CLIENTS"
	// memMeasureEnv is set in a test binary built without the race
	// detector so that it measures for a race-built parent.
	memMeasureEnv = "FLOCK_MQTT_MEM_MEASURE"
)

// TestMemoryPerIdleConnection measures the broker's memory per idle device
// connection and holds it to memoryGoal. By default it connects 300
// devices, which gives a steady figure in a few seconds; FLOCK_MQTT_MEM=1
// connects 2,000 and measures mochi's default options too, for comparison.
// The clients run in a child process (this test binary again) so that their
// memory stays out of the figure.
//
// Under the race detector an idle connection's goroutine stack stays at
// 8 KB instead of shrinking to 4 KB (13 KB per connection in all, measured
// with 300), which is not what a production build costs. A race-built test
// therefore builds this package's tests without the race detector and
// measures there, so `make test`, which runs everything under -race, still
// holds the broker to the goal.
func TestMemoryPerIdleConnection(t *testing.T) {
	if file := os.Getenv(memClientsEnv); file != "" {
		holdIdleClients(t, file)
		return
	}
	if raceEnabled() {
		if os.Getenv(memMeasureEnv) != "" {
			t.Fatalf("%s is set in a race-built test binary", memMeasureEnv)
		}
		measureWithoutRace(t)
		return
	}

	type row struct {
		name          string
		writesPending int32
		readBuffer    int
		maxBytes      float64 // per connection; 0: no bound
	}
	n := 300
	rows := []row{{"flock options", clientWritesPending, readBufferSize, memoryGoal}}
	if os.Getenv("FLOCK_MQTT_MEM") != "" {
		n = 2000
		rows = append(rows, row{"mochi defaults", 1024 * 8, 1024 * 2, 0})
	}

	pool := pgtest.Pool(t)
	tokens := newTokens(t, pool, testIssuer)
	var list strings.Builder
	for _, id := range addDevices(t, pool, n) {
		tok, _, err := tokens.Issue(t.Context(), id, uuid.New(), uuid.New())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&list, "%s %s\n", id, tok)
	}

	for _, tt := range rows {
		t.Run(tt.name, func(t *testing.T) {
			b, err := New(Config{Listen: "127.0.0.1:0", Log: slog.New(slog.DiscardHandler), Devices: pool}, tokens)
			if err != nil {
				t.Fatal(err)
			}
			// Before Run, so before any client exists.
			b.server.Options.Capabilities.MaximumClientWritesPending = tt.writesPending
			b.server.Options.ClientNetReadBufferSize = tt.readBuffer
			stop := run(t, b)

			file := filepath.Join(t.TempDir(), "clients")
			if err := os.WriteFile(file, []byte(b.Addr()+"\n"+list.String()), 0o600); err != nil {
				t.Fatal(err)
			}
			before := settledMemStats()

			cmd := exec.Command(os.Args[0], "-test.run=^TestMemoryPerIdleConnection$")
			cmd.Env = append(os.Environ(), memClientsEnv+"="+file)
			cmd.Stderr = os.Stderr
			stdin, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			ready := make(chan string, 1)
			go func() {
				sc := bufio.NewScanner(stdout)
				var out strings.Builder
				for sc.Scan() {
					if sc.Text() == "ready" {
						ready <- ""
						_, _ = io.Copy(io.Discard, stdout)
						return
					}
					out.WriteString(sc.Text() + "\n")
				}
				ready <- out.String()
			}()
			defer func() {
				stdin.Close()
				if err := cmd.Wait(); err != nil {
					t.Errorf("client process: %v", err)
				}
			}()
			select {
			case out := <-ready:
				if out != "" {
					t.Fatalf("client process failed:\n%s", out)
				}
			case <-time.After(5 * time.Minute):
				t.Fatal("clients did not connect")
			}
			testutil.Eventually(t, "every client connected", func() error {
				if c := b.server.Info.Clone().ClientsConnected; c < int64(n) {
					return fmt.Errorf("%d clients connected, want %d", c, n)
				}
				return nil
			})
			after := settledMemStats()

			heap := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / float64(n)
			stack := float64(int64(after.StackInuse)-int64(before.StackInuse)) / float64(n)
			t.Logf("%s: %d idle MQTT v5 connections: heap in use %.0f B/conn, goroutine stacks %.0f B/conn, total %.0f B/conn (%d goroutines)",
				tt.name, n, heap, stack, heap+stack, runtime.NumGoroutine())
			if tt.maxBytes > 0 && heap+stack > tt.maxBytes {
				t.Errorf("%.0f bytes per idle connection, over the bound of %.0f", heap+stack, tt.maxBytes)
			}
			stdin.Close()
			_ = stop()
		})
	}
}

// raceEnabled reports whether this test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" {
			return s.Value == "true"
		}
	}
	return false
}

// measureWithoutRace builds this package's tests without the race detector
// and runs TestMemoryPerIdleConnection there, reporting what it logs.
func measureWithoutRace(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "broker.test")
	build := exec.Command(goTool, "test", "-c", "-vet=off", "-o", bin, ".")
	// GOFLAGS could carry -race back in.
	build.Env = append(os.Environ(), "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the tests without the race detector: %v\n%s", err, out)
	}
	measure := exec.Command(bin, "-test.run=^TestMemoryPerIdleConnection$", "-test.v")
	measure.Env = append(os.Environ(), memMeasureEnv+"=1")
	out, err := measure.CombinedOutput()
	for l := range strings.Lines(string(out)) {
		if strings.Contains(l, "B/conn") {
			_, msg, _ := strings.Cut(strings.TrimSpace(l), ": ")
			t.Log("without the race detector: " + msg)
		}
	}
	if err != nil {
		t.Fatalf("measurement without the race detector failed: %v\n%s", err, out)
	}
}

func settledMemStats() runtime.MemStats {
	var m runtime.MemStats
	for range 6 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m
}

// holdIdleClients is the child side of TestMemoryPerIdleConnection: it
// connects every device listed in file, prints "ready" and holds the
// connections until its stdin closes.
func holdIdleClients(t *testing.T, file string) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	addr := lines[0]
	conns := make([]net.Conn, 0, len(lines)-1)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for _, l := range lines[1:] {
		id, tok, _ := strings.Cut(l, " ")
		conn, code, err := rawConnect(addr, 5, id, id, tok)
		if err != nil {
			t.Fatalf("connect %s: %v", id, err)
		}
		conns = append(conns, conn)
		if code != 0 {
			t.Fatalf("connect %s: CONNACK %#x", id, code)
		}
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
}
