package app

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/logging"
)

// devKafkaMain serves the embedded kfake cluster on a TCP address until a
// signal stops it, so targets run as separate processes on one machine can
// share a message bus without a Kafka installation. It prints the address
// it serves on stdout (one line: useful with --listen 127.0.0.1:0), and
// logs to stderr.
func devKafkaMain(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("flock-api dev-kafka", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9092", "address to serve Kafka on; clients are told this address, so name a host they dial (port 0 picks a free one)")
	logLevel := fs.String("log-level", devKafkaEnvOr(getenv, "FLOCK_LOG_LEVEL", "info"), "debug, info, warn or error (also $FLOCK_LOG_LEVEL)")
	logFormat := fs.String("log-format", devKafkaEnvOr(getenv, "FLOCK_LOG_FORMAT", "text"), "json or text (also $FLOCK_LOG_FORMAT)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: flock-api dev-kafka [--listen 127.0.0.1:9092]\n\n"+
			"Development only: serves the embedded Kafka (a kfake cluster in memory, one broker, the\n"+
			"flock topics created) until interrupted, so targets run as separate processes can share\n"+
			"it: start them with FLOCK_KAFKA_BROKERS set to the address printed on stdout. Nothing\n"+
			"is kept when it stops.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseArgs(fs, args, stderr); !ok {
		return code
	}
	log, err := logging.New(stderr, *logFormat, *logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "flock-api dev-kafka: %v\n", err)
		return ExitUsage
	}
	err = bus.ServeEmbedded(ctx, *listen, log, func(addr string) { fmt.Fprintln(stdout, addr) })
	if err != nil {
		fmt.Fprintf(stderr, "flock-api dev-kafka: --listen: %v\n", err)
		return ExitError
	}
	return ExitOK
}

// devKafkaEnvOr is getenv(key), or def when that is empty.
func devKafkaEnvOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}
