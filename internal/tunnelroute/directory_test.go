package tunnelroute

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/wgtunnel"
)

// TestDirectory: the newest handshake holds a device, a replica whose
// record lapsed or went is not routed to, and a deleted device is
// forgotten.
func TestDirectory(t *testing.T) {
	ctx := context.Background()
	d := &Directory{KV: kv.NewMemory()}
	dev := uuid.New()
	t0 := time.Now()
	if _, err := d.Holder(ctx, dev); !errors.Is(err, ErrOffline) {
		t.Fatalf("unknown device: %v, want ErrOffline", err)
	}
	for _, r := range []string{"a", "b"} {
		if err := d.Alive(ctx, r, "http://"+r); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		replica string
		at      time.Time
		claimed bool
		holder  string
	}{
		{"a", t0, true, "a"},
		{"b", t0.Add(time.Second), true, "b"},
		// a's renewal of its older handshake loses to b's newer one
		{"a", t0.Add(500 * time.Millisecond), false, "b"},
		{"a", t0.Add(2 * time.Second), true, "a"},
	}
	for i, s := range steps {
		ok, err := d.Claim(ctx, dev, Holder{Replica: s.replica, URL: "http://" + s.replica, At: s.at})
		if err != nil || ok != s.claimed {
			t.Fatalf("step %d: claim by %s = %v, %v; want %v", i, s.replica, ok, err, s.claimed)
		}
		h, err := d.Holder(ctx, dev)
		if err != nil || h.Replica != s.holder {
			t.Fatalf("step %d: holder %v, %v; want %s", i, h, err, s.holder)
		}
	}
	if err := d.Gone(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Holder(ctx, dev); !errors.Is(err, ErrOffline) {
		t.Errorf("holder on a replica that went: %v, want ErrOffline", err)
	}
	if err := d.Forget(ctx, dev); err != nil {
		t.Fatal(err)
	}
	if err := d.Alive(ctx, "a", "http://a"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Holder(ctx, dev); !errors.Is(err, ErrOffline) {
		t.Errorf("forgotten device: %v, want ErrOffline", err)
	}
}

// loopback dials loopback TCP ports as if they were a device's: a real
// connection, refused where nothing listens.
type loopback struct{ known uuid.UUID }

func (l loopback) DialTCP(ctx context.Context, device uuid.UUID, port uint16) (net.Conn, error) {
	if device != l.known {
		return nil, wgtunnel.ErrNoPeer
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", itoa(port)))
}

func itoa(p uint16) string { return strings.TrimPrefix((&net.TCPAddr{Port: int(p)}).String(), ":") }

// TestDialThroughAnotherReplica dials over the internal plane: the stream
// through the holder's Handler, and each refusal as the error the API and
// proxy tell users.
func TestDialThroughAnotherReplica(t *testing.T) {
	ctx := context.Background()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	closedPort := closedPort(t)

	dev := uuid.New()
	holder := httptest.NewServer(Handler(loopback{known: dev}, "secret", time.Second, slog.New(slog.DiscardHandler)))
	defer holder.Close()
	dir := &Directory{KV: kv.NewMemory()}
	if err := dir.Alive(ctx, "b", holder.URL); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uuid.UUID{dev, uuid.Nil} {
		if _, err := dir.Claim(ctx, id, Holder{Replica: "b", URL: holder.URL, At: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	d := &Dialer{Dir: dir, Token: "secret"}
	d.SetLocal("a", loopback{}) // this process's replica holds nothing

	c, err := d.Dial(ctx, dev, uint16(echo.Addr().(*net.TCPAddr).Port))
	if err != nil {
		t.Fatalf("dial through replica b: %v", err)
	}
	msg := []byte("through the internal plane")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(msg) {
		t.Fatalf("echo %q, %v", got, err)
	}
	c.Close()

	for _, tc := range []struct {
		name   string
		dialer *Dialer
		device uuid.UUID
		port   uint16
		want   error
	}{
		{"closed port", d, dev, closedPort, ErrPortClosed},
		{"the holder has no peer", d, uuid.Nil, 22, ErrOffline},
		{"never held", d, uuid.New(), 22, ErrOffline},
		{"wrong internal token", &Dialer{Dir: dir, Token: "nope"}, dev, 22, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.dialer.Dial(ctx, tc.device, tc.port)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("= %v, want %v", err, tc.want)
			}
			if tc.want == nil && !strings.Contains(err.Error(), "401") {
				t.Errorf("= %v, want the holder's 401", err)
			}
		})
	}

	// The holder went away without withdrawing: its record is still
	// there, the dial fails as offline rather than hanging.
	holder.Close()
	if _, err := d.Dial(ctx, dev, 22); !errors.Is(err, ErrOffline) {
		t.Errorf("dial through a dead replica: %v, want ErrOffline", err)
	}
}

// closedPort is a loopback port that refuses connections for the whole
// test: bound by a socket that never listens, so no other process can
// take it (a port freed by closing a listener can be, under load).
func closedPort(t *testing.T) uint16 {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return uint16(sa.(*syscall.SockaddrInet4).Port)
}
