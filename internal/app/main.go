package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/flock-io/flock-api/internal/buildinfo"
	"github.com/flock-io/flock-api/internal/config"
	"github.com/flock-io/flock-api/internal/devoidc"
	"github.com/flock-io/flock-api/internal/logging"
	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/simulate"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitError = 1
	ExitUsage = 2
)

// Main runs the command with args (without the program name) and returns the
// exit status. ctx is cancelled by SIGTERM/SIGINT.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) > 0 {
		switch args[0] {
		case "migrate":
			return migrateMain(ctx, args[1:], stdout, stderr, getenv)
		case "dev-token":
			return devTokenMain(ctx, args[1:], stdout, stderr, getenv)
		case "simulate":
			return simulateMain(ctx, args[1:], stdout, stderr, getenv)
		case "dev-kafka":
			return devKafkaMain(ctx, args[1:], stdout, stderr, getenv)
		case "tunnel":
			return tunnelMain(ctx, args[1:], os.Stdin, stdout, stderr, getenv)
		}
	}
	return serveMain(ctx, args, stdout, stderr, getenv)
}

func newFlagSet(name string, stderr io.Writer) (*flag.FlagSet, *config.Settings) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs, config.Register(fs)
}

func serveMain(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs, settings := newFlagSet("flock-api", stderr)
	listTargets := fs.Bool("list-targets", false, "print the targets and their dependencies, then exit")
	printConfig := fs.Bool("print-config", false, "print the effective configuration (secrets redacted), then exit")
	version := fs.Bool("version", false, "print the version, then exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: flock-api [flags]\n       flock-api migrate up|down|status [flags]\n       flock-api dev-token --email EMAIL [--name NAME] [--ttl 12h]\n       flock-api simulate --api URL --provisioning-key KEY [--devices N] [--rate R] (see simulate --help)\n       flock-api dev-kafka [--listen 127.0.0.1:9092] (development only: serves the embedded Kafka to other processes)\n       flock-api tunnel --device ID [--port 22] [--listen ADDR] (a TCP stream to a device's port; see tunnel --help)\n\nFlags (each also set by its environment variable):\n")
		settings.Usage(stderr)
		fmt.Fprintf(stderr, "  --list-targets\n  --print-config\n  --version\n")
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "flock-api: unexpected argument %q (subcommands: migrate, dev-token, simulate)\n", fs.Arg(0))
		return ExitUsage
	}
	if *version {
		bi := buildinfo.Get()
		fmt.Fprintf(stdout, "flock-api %s (commit %s, %s)\n", bi.Version, bi.Commit, bi.GoVersion)
		return ExitOK
	}
	if err := settings.Resolve(fs, getenv); err != nil {
		fmt.Fprintf(stderr, "flock-api: %v\n", err)
		return ExitUsage
	}
	cfg := settings.Config()
	log, err := logging.New(stderr, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		fmt.Fprintf(stderr, "flock-api: %v\n", err)
		return ExitUsage
	}
	a, err := New(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "flock-api: %v\n", err)
		return ExitError
	}
	if *listTargets {
		PrintTargets(stdout, a.Manager())
		return ExitOK
	}
	order, err := a.Manager().Resolve(modules.ParseTargets(cfg.Target))
	if err != nil {
		name := "FLOCK_TARGET"
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "target" {
				name = "--target"
			}
		})
		fmt.Fprintf(stderr, "flock-api: invalid %s: %v\n", name, err)
		return ExitUsage
	}
	if *printConfig {
		settings.Print(stdout)
		return ExitOK
	}
	if err := settings.CheckServe(); err != nil {
		fmt.Fprintf(stderr, "flock-api: %v\n", err)
		return ExitUsage
	}
	slog.SetDefault(log)
	return a.run(ctx, order)
}

// run initialises the resolved modules and runs them until ctx ends.
func (a *App) run(ctx context.Context, order []string) int {
	for _, name := range order {
		if !a.mgr.Hidden(name) && name != All {
			a.targets = append(a.targets, name)
		}
	}
	running, err := a.mgr.Init(ctx, order, a.log)
	if err != nil {
		a.log.Error("start-up failed", "error", err.Error())
		return ExitError
	}
	err = running.Run(ctx, func() {
		a.ready.Drain()
		if d := a.cfg.ShutdownDelay; d > 0 {
			a.log.Info("readiness is 503; waiting before draining", "delay", d.String())
			time.Sleep(d)
		}
	})
	if err != nil {
		a.log.Error("stopped with error", "error", err.Error())
		return ExitError
	}
	a.log.Info("stopped")
	return ExitOK
}

// PrintTargets writes each visible target with its dependencies.
func PrintTargets(w io.Writer, m *modules.Manager) {
	for _, t := range m.Targets() {
		fmt.Fprintf(w, "%s\n", t)
		if d := m.Deps(t); len(d) > 0 {
			fmt.Fprintf(w, "  needs: %s\n", strings.Join(d, ", "))
		}
	}
}

func migrateMain(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs, settings := newFlagSet("flock-api migrate", stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: flock-api migrate up|down|status [--database-url URL]\n")
	}
	// Accept flags before or after the verb.
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fs.Usage()
		return ExitUsage
	}
	verb := rest[0]
	if err := fs.Parse(rest[1:]); err != nil {
		return ExitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "flock-api migrate: unexpected argument %q\n", fs.Arg(0))
		return ExitUsage
	}
	if err := settings.Resolve(fs, getenv); err != nil {
		fmt.Fprintf(stderr, "flock-api: %v\n", err)
		return ExitUsage
	}
	cfg := settings.Config()
	log, err := logging.New(stderr, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		fmt.Fprintf(stderr, "flock-api: %v\n", err)
		return ExitUsage
	}
	switch verb {
	case "up", "down", "status":
	default:
		fmt.Fprintf(stderr, "flock-api migrate: unknown verb %q (want up, down or status)\n", verb)
		return ExitUsage
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		fmt.Fprintf(stderr, "flock-api migrate: FLOCK_DATABASE_URL: %v\n", err)
		return ExitError
	}
	defer pool.Close()
	m, err := postgres.NewMigrator(pool, log)
	if err != nil {
		fmt.Fprintf(stderr, "flock-api migrate: %v\n", err)
		return ExitError
	}
	defer m.Close()
	switch verb {
	case "up":
		var n int
		if n, err = m.Up(ctx); err == nil {
			fmt.Fprintf(stdout, "applied %d migration(s)\n", n)
		}
	case "down":
		if err = m.Down(ctx); err == nil {
			fmt.Fprintln(stdout, "rolled back 1 migration")
		}
	case "status":
		err = m.Status(ctx, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "flock-api migrate: %v\n", err)
		return ExitError
	}
	return ExitOK
}

// devTokenMain prints a token of the dev OIDC provider. It signs with the
// provider's key in the database, so the token is exactly one the running
// dev server (same database, same public URL) accepts.
func devTokenMain(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs, settings := newFlagSet("flock-api dev-token", stderr)
	email := fs.String("email", "", "the user's email (required)")
	name := fs.String("name", "", "the user's name (default: the part of the email before @)")
	ttl := fs.Duration("ttl", 12*time.Hour, "how long the token is valid")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: flock-api dev-token --email EMAIL [--name NAME] [--ttl 12h] [--database-url URL] [--public-url URL]\n")
	}
	if err := fs.Parse(args); err != nil {
		return ExitUsage
	}
	if err := settings.Resolve(fs, getenv); err != nil {
		fmt.Fprintf(stderr, "flock-api: %v\n", err)
		return ExitUsage
	}
	cfg := settings.Config()
	if *email == "" || !strings.Contains(*email, "@") {
		fmt.Fprintln(stderr, "flock-api dev-token: --email must be an email address")
		return ExitUsage
	}
	if *ttl <= 0 {
		fmt.Fprintln(stderr, "flock-api dev-token: --ttl must be positive")
		return ExitUsage
	}
	if cfg.OIDCIssuer != "" {
		fmt.Fprintf(stderr, "flock-api dev-token: FLOCK_OIDC_ISSUER is set (%s); the server verifies that issuer's tokens, not the dev provider's\n", cfg.OIDCIssuer)
		return ExitUsage
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		fmt.Fprintf(stderr, "flock-api dev-token: FLOCK_DATABASE_URL: %v\n", err)
		return ExitError
	}
	defer pool.Close()
	prov, err := devoidc.New(ctx, pool, DevIssuer(cfg.PublicURL), DevAudience)
	if err != nil {
		fmt.Fprintf(stderr, "flock-api dev-token: %v (run flock-api migrate up, or start the server with --dev once)\n", err)
		return ExitError
	}
	token, err := prov.Mint(ctx, *email, *name, *ttl)
	if err != nil {
		fmt.Fprintf(stderr, "flock-api dev-token: %v\n", err)
		return ExitError
	}
	fmt.Fprintln(stdout, token)
	return ExitOK
}

// simulateMain runs simulated devices against a deployment until a signal or
// --duration stops them, printing a summary line every --summary-every.
func simulateMain(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("flock-api simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := simulate.Config{Out: stdout}
	fs.StringVar(&cfg.API, "api", "http://localhost:8080", "base URL of the flock-api deployment")
	fs.StringVar(&cfg.ProvisioningKey, "provisioning-key", getenv("FLOCK_PROVISIONING_KEY"), "provisioning key of the fleet to join (default $FLOCK_PROVISIONING_KEY)")
	fs.IntVar(&cfg.Devices, "devices", 10, "devices to simulate")
	fs.Float64Var(&cfg.Rate, "rate", 10, "messages per second across all devices (state, telemetry, logs); 0 for connected idle devices")
	fs.StringVar(&cfg.MQTTURL, "mqtt", "", "MQTT broker URL, e.g. mqtt://127.0.0.1:1883 (default: the mqtt_url registration returns)")
	fs.DurationVar(&cfg.Duration, "duration", 0, "stop after this long (default: until interrupted)")
	fs.DurationVar(&cfg.SummaryEvery, "summary-every", simulate.DefaultSummaryEvery, "how often to print a summary line")
	fs.IntVar(&cfg.Concurrency, "concurrency", simulate.DefaultConcurrency, "devices registering and connecting at once")
	fs.StringVar(&cfg.Name, "name", simulate.DefaultName, "prefix of the devices' names")
	fs.DurationVar(&cfg.TokenRefresh, "token-refresh", 0, "renew each device's token this often (default: at three quarters of its life), on the open MQTT connection where the broker allows")
	fs.DurationVar(&cfg.StepTime, "step-time", simulate.DefaultStepTime, "pause between the steps of an update (download started, half way, finished, old stopped, install started, running)")
	fs.Float64Var(&cfg.LockShare, "lock-share", 0, "share of devices (0 to 1, chosen by a hash of their uuid) that hold an update lock on their first service when an update arrives")
	fs.DurationVar(&cfg.LockFor, "lock-for", simulate.DefaultLockFor, "how long such an update lock holds the device on its release")
	fs.Float64Var(&cfg.FailShare, "fail-share", 0, "share of devices (0 to 1, chosen by a hash of device and release) that fail to start a release they have not run before")
	fs.BoolVar(&cfg.PullImages, "pull-images", false, "fetch each release's images while updating: a service's first image by its layers through the registry-proxy, later ones by a delta (falling back to the layers); counted in the summary")
	fs.StringVar(&cfg.Architecture, "architecture", "", "the devices' architecture (amd64, arm64, armv7, armv6, i386, riscv64): registered with it, and the manifest taken from image indexes (default: the fleet's; an index must then hold one linux image)")
	fs.StringVar(&cfg.LayerDir, "layer-dir", "", "with --pull-images, keep each device's layers under this directory (removed when it stops) instead of in memory")
	fs.StringVar(&cfg.RegistryAddr, "registry-addr", "", "with --pull-images, dial this host:port for the registry named in image references (when its public host does not resolve from here)")
	fs.BoolVar(&cfg.Tunnel, "tunnel", false, "register a WireGuard key and keep a tunnel up: each device serves a small web server on overlay port 80")
	forwards := fs.String("tunnel-forward", "", "with --tunnel, relay overlay ports to local addresses: 22=127.0.0.1:2222,8080=127.0.0.1:8080")
	fs.StringVar(&cfg.TunnelEndpoint, "tunnel-endpoint", "", "with --tunnel, send WireGuard to this host:port instead of the endpoint registration names")
	logLevel := fs.String("log-level", "warn", "debug, info, warn or error (logs go to stderr)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: flock-api simulate --api URL --provisioning-key KEY [flags]\n\n"+
			"Registers simulated devices with the provisioning key, connects them over MQTT v5, publishes\n"+
			"state, telemetry and logs at --rate, follows target nudges (installing each release by its\n"+
			"services' update strategies, with --lock-share devices held by an update lock and\n"+
			"--fail-share devices failing, and with --pull-images fetching the images by layers or\n"+
			"deltas), and prints a summary line every --summary-every until interrupted or --duration\n"+
			"passes.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if code, ok := parseArgs(fs, args, stderr); !ok {
		return code
	}
	if cfg.ProvisioningKey == "" {
		fmt.Fprintln(stderr, "flock-api simulate: --provisioning-key (or FLOCK_PROVISIONING_KEY) is required")
		return ExitUsage
	}
	if *forwards != "" {
		cfg.TunnelForward = map[uint16]string{}
		for _, f := range strings.Split(*forwards, ",") {
			port, to, ok := strings.Cut(strings.TrimSpace(f), "=")
			n, err := strconv.ParseUint(port, 10, 16)
			if !ok || err != nil || n == 0 || to == "" {
				fmt.Fprintf(stderr, "flock-api simulate: --tunnel-forward: %q is not port=host:port\n", f)
				return ExitUsage
			}
			cfg.TunnelForward[uint16(n)] = to
		}
	}
	if cfg.SummaryEvery <= 0 {
		fmt.Fprintln(stderr, "flock-api simulate: --summary-every must be positive")
		return ExitUsage
	}
	if cfg.LockFor <= 0 {
		fmt.Fprintln(stderr, "flock-api simulate: --lock-for must be positive")
		return ExitUsage
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "flock-api %v\n", err)
		return ExitUsage
	}
	log, err := logging.New(stderr, "text", *logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "flock-api simulate: --log-level: %v\n", err)
		return ExitUsage
	}
	cfg.Log = log
	if _, err := simulate.Run(ctx, cfg); err != nil {
		fmt.Fprintf(stderr, "flock-api %v\n", err)
		return ExitError
	}
	return ExitOK
}

// parseArgs parses the flags of a subcommand that takes no positional
// arguments; when ok is false the subcommand exits with code (0 after
// --help, which printed the usage).
func parseArgs(fs *flag.FlagSet, args []string, stderr io.Writer) (code int, ok bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK, false
		}
		return ExitUsage, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return ExitUsage, false
	}
	return 0, true
}
