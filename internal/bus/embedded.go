package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"
)

// embeddedOpts configure the kfake cluster the same way wherever it runs:
// one broker with AllTopics already created.
func embeddedOpts(partitions int32, log *slog.Logger) []kfake.Opt {
	return []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.SeedTopics(partitions, AllTopics...),
		kfake.DefaultNumPartitions(int(partitions)),
		kfake.WithLogger(kfakeLogger{log}),
	}
}

// startEmbedded runs a one-broker kfake cluster on a random loopback port with
// AllTopics already created, so `--target=all` needs no Kafka. Its state lives
// in memory and dies with the process.
func startEmbedded(partitions int32, log *slog.Logger) (*kfake.Cluster, error) {
	c, err := kfake.NewCluster(embeddedOpts(partitions, log)...)
	if err != nil {
		return nil, fmt.Errorf("kfake cluster: %w", err)
	}
	return c, nil
}

// ServeEmbedded serves the embedded cluster (the one Open starts when no
// brokers are configured, AllTopics seeded) on the TCP address addr until
// ctx ends, so that separate processes share it as they would a Kafka
// cluster: `flock-api dev-kafka`. It is a development tool: everything
// lives in memory and is gone when it stops.
//
// A Kafka broker tells clients the address to reach it at, and kfake tells
// them its listening address, so addr must be one clients can dial: a host
// or IP address, not an unspecified one (":9092", "0.0.0.0:9092"). Port 0
// picks a free port. listening, when not nil, is called with the address
// once clients can connect. ServeEmbedded returns nil when ctx ends, or
// the reason it could not start.
func ServeEmbedded(ctx context.Context, addr string, log *slog.Logger, listening func(addr string)) error {
	if log == nil {
		log = slog.Default()
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("embedded kafka: listen address %q: want host:port", addr)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return fmt.Errorf("embedded kafka: listen address %q: name the host clients dial (e.g. 127.0.0.1:9092); a Kafka broker advertises the address it listens on", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("embedded kafka: %w", err)
	}
	// kfake asks for one listener per broker and dials nothing itself;
	// handing it ours makes it serve addr instead of a random loopback port.
	var once sync.Once
	listen := func(string, string) (net.Listener, error) {
		var l net.Listener
		once.Do(func() { l = ln })
		if l == nil {
			return nil, errors.New("embedded kafka serves one broker")
		}
		return l, nil
	}
	c, err := kfake.NewCluster(append(embeddedOpts(defaultPartitions, log), kfake.ListenFn(listen))...)
	if err != nil {
		_ = ln.Close()
		return fmt.Errorf("embedded kafka: kfake cluster: %w", err)
	}
	// Close shuts the listener and every client connection; it runs on
	// this goroutine, so nothing outlives the call.
	defer c.Close()
	served := c.ListenAddrs()[0]
	log.Info("embedded kafka serving (development only: in memory, one broker)", "addr", served,
		"topics", AllTopics, "partitions", defaultPartitions)
	if listening != nil {
		listening(served)
	}
	<-ctx.Done()
	log.Info("embedded kafka stopping", "addr", served)
	return nil
}

// kfakeLogger passes the fake broker's warnings and errors to slog; below
// that it logs every request.
type kfakeLogger struct{ log *slog.Logger }

func (l kfakeLogger) Logf(level kfake.LogLevel, format string, args ...any) {
	var lvl slog.Level
	switch level {
	case kfake.LogLevelError:
		lvl = slog.LevelError
	case kfake.LogLevelWarn:
		lvl = slog.LevelWarn
	default:
		return
	}
	if !l.log.Enabled(context.Background(), lvl) {
		return
	}
	l.log.Log(context.Background(), lvl, "embedded kafka: "+fmt.Sprintf(format, args...))
}
