package app_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/syncbuf"
)

// TestDevKafka: `flock-api dev-kafka --listen 127.0.0.1:0` prints the
// address it serves, Kafka clients reach it there, and it exits 0 when
// stopped.
func TestDevKafka(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncbuf.Buffer
	exit := make(chan int, 1)
	go func() {
		exit <- app.Main(ctx, []string{"dev-kafka", "--listen", "127.0.0.1:0"}, &stdout, &stderr, func(string) string { return "" })
	}()
	var addr string
	testutil.Eventually(t, "dev-kafka to print its address", func() error {
		select {
		case code := <-exit:
			t.Fatalf("dev-kafka exited %d before listening:\n%s", code, stderr.String())
		default:
		}
		if line, _, ok := strings.Cut(stdout.String(), "\n"); ok {
			addr = line
			return nil
		}
		return errors.New("nothing printed yet")
	})
	if _, _, err := net.SplitHostPort(addr); err != nil {
		t.Fatalf("dev-kafka printed %q, want host:port", addr)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Ping(t.Context()); err != nil {
		t.Fatalf("ping dev-kafka at %s: %v", addr, err)
	}
	cancel()
	if code := <-exit; code != app.ExitOK {
		t.Fatalf("dev-kafka exit after stop = %d, want 0:\n%s", code, stderr.String())
	}
}

func TestDevKafkaRefusesAnAddressClientsCannotDial(t *testing.T) {
	var stdout, stderr syncbuf.Buffer
	code := app.Main(t.Context(), []string{"dev-kafka", "--listen", ":9092"}, &stdout, &stderr, func(string) string { return "" })
	if code != app.ExitError || !strings.Contains(stderr.String(), "--listen") || stdout.String() != "" {
		t.Fatalf("exit %d, stdout %q, stderr %q; want 1 and one line naming --listen", code, stdout.String(), stderr.String())
	}
}
