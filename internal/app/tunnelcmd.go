package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"

	"github.com/flock-io/flock-api/internal/tunnelcli"
)

// tunnelMain is `flock-api tunnel`: a TCP stream to a device's port,
// relayed on stdin/stdout (for ssh's ProxyCommand) or on a local port.
func tunnelMain(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("flock-api tunnel", flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := fs.String("api", "", "the deployment's URL (FLOCK_API_URL; default http://127.0.0.1:8080)")
	device := fs.String("device", "", "the device's id (required)")
	port := fs.Int("port", 22, "the device's TCP port")
	listen := fs.String("listen", "", "forward this local address (127.0.0.1:8022) instead of relaying stdin/stdout")
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: flock-api tunnel --device ID [--port 22] [--listen 127.0.0.1:8022] [--api URL]

Opens a TCP stream to a port of a device over its WireGuard tunnel, with
the token in FLOCK_TOKEN (a user token or an organisation API key):

  ssh -o ProxyCommand='flock-api tunnel --device %h --port 22' root@<device id>
  flock-api tunnel --device <device id> --port 80 --listen 127.0.0.1:8080

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	if *device == "" || *port < 1 || *port > 65535 {
		fmt.Fprintln(stderr, "flock-api tunnel: --device is required and --port must be 1-65535")
		return ExitUsage
	}
	o := tunnelcli.Options{API: *api, Token: getenv("FLOCK_TOKEN"), Device: *device, Port: *port}
	if o.API == "" {
		o.API = getenv("FLOCK_API_URL")
	}
	if o.API == "" {
		o.API = "http://127.0.0.1:8080"
	}
	if o.Token == "" {
		fmt.Fprintln(stderr, "flock-api tunnel: set FLOCK_TOKEN to a user token or an API key")
		return ExitUsage
	}
	var err error
	if *listen == "" {
		err = tunnelcli.Stdio(ctx, o, stdin, stdout)
	} else {
		log := slog.New(slog.NewTextHandler(stderr, nil))
		err = tunnelcli.Listen(ctx, o, *listen, func(a net.Addr) {
			fmt.Fprintf(stderr, "forwarding %s to port %d of device %s\n", a, *port, *device)
		}, log)
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "flock-api tunnel: %v\n", err)
		return ExitError
	}
	return ExitOK
}
