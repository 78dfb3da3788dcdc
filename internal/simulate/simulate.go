// Package simulate runs a fleet of simulated devices against a flock-api
// deployment, the way real agents use it: each registers with a provisioning
// key and its own Ed25519 key, trades signed assertions for device tokens,
// connects over MQTT v5 with a will, publishes state, telemetry and logs as
// asyncapi/flock.yaml describes them, and follows target nudges by fetching
// its target state over REST and installing each new release the way a
// supervisor would: service by service according to its update strategy,
// publishing update events and a reported state at every step. A share of
// the devices hold an update lock for a while when an update arrives, and a
// share fail to start a release (Locks and Fails say which), so a rollout
// can be watched meeting both. With PullImages they fetch the releases'
// images too, through the registry-proxy and by deltas (images.go).
//
// It backs `flock-api simulate`, and its Payloads serve benchmarks that need
// the same messages.
package simulate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/flock-io/flock-api/gen/client"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/registry"
)

// Defaults of Config.
const (
	DefaultConcurrency  = 50
	DefaultSummaryEvery = 2 * time.Second
	DefaultName         = "sim"
	// DefaultStepTime is the step time `flock-api simulate` uses; a Config
	// without one takes no time between steps.
	DefaultStepTime = 200 * time.Millisecond
	// DefaultLockFor is how long an update lock holds when Config.LockFor
	// is not set.
	DefaultLockFor = 30 * time.Second
)

const (
	// httpTimeout bounds each REST call.
	httpTimeout = 30 * time.Second
	// firstConnectWait bounds how long a device holds its registration slot
	// waiting for its first connection attempt to finish.
	firstConnectWait = 30 * time.Second
	// publishTimeout bounds waiting for a PUBACK.
	publishTimeout = 10 * time.Second
	// maxNameLen keeps prefix-NNNNN within the 100 characters of a name.
	maxNameLen = 80
)

// Config says what to simulate.
type Config struct {
	// API is the base URL of the flock-api deployment, e.g. http://localhost:8080.
	API string
	// ProvisioningKey registers the devices into its fleet.
	ProvisioningKey string
	// Devices is how many devices to simulate.
	Devices int
	// Rate is how many messages per second all devices publish together,
	// spread evenly over the devices with jitter. It bounds everything the
	// devices publish, the online status and state after each connect and
	// the update events included: one limiter, with a burst of a tenth of a
	// second, paces them all. 0 leaves the devices connected and following
	// nudges, publishing only status, the state on connect and the events
	// and states of updates, unpaced. The periodic mix alone fills Rate, so
	// an update's messages wait their turn among it: its steps take longer
	// than StepTime when Rate is small for the devices.
	Rate float64
	// MQTTURL overrides the broker registration names (mqtt_url), e.g.
	// mqtt://127.0.0.1:1883; one of the two is needed.
	MQTTURL string
	// Duration ends the simulation after this long; 0 runs until ctx ends.
	Duration time.Duration
	// Concurrency bounds the devices registering and connecting at once
	// (default 50).
	Concurrency int
	// SummaryEvery is how often a summary line is written to Out (default 2s).
	SummaryEvery time.Duration
	// Out receives the summary lines; nil discards them.
	Out io.Writer
	// OnSummary, when set, is called with each periodic summary, for
	// programs (benchmarks, tests) that follow the run. It runs on the
	// goroutine that prints the summaries, so it should return quickly.
	OnSummary func(Summary)
	// Log receives what goes wrong, each kind of problem once at Warn and
	// then at Debug; nil means slog.Default().
	Log *slog.Logger
	// Name prefixes the devices' names: <Name>-00001 ... (default "sim").
	Name string
	// TokenRefresh, when positive, renews each device's token this often
	// instead of at three quarters of its life, to load the token endpoint
	// and the broker's re-authentication.
	TokenRefresh time.Duration
	// StepTime is the pause between the steps of an update (download
	// started, half way, finished, old container stopped, install started,
	// running); 0 publishes them back to back.
	StepTime time.Duration
	// LockShare (0 to 1) is the share of devices, chosen by Locks, that
	// hold an update lock on the first service of the release they run for
	// LockFor from when an update arrives: they report the service
	// update_locked and stay on that release meanwhile, then update.
	LockShare float64
	// LockFor is how long such a lock holds (default 30s).
	LockFor time.Duration
	// FailShare (0 to 1) is the share of devices, chosen per release by
	// Fails, that fail to start a release they have not run before: they
	// report its first service failed and publish a failed update event.
	FailShare float64

	// PullImages makes the devices fetch their releases' images during an
	// update's download step, which then ends only once they are fetched
	// (see images.go): a service's first image by pulling its layers
	// through the registry-proxy, logged in as the device; a new image of
	// a service whose previous image the device holds by a delta from the
	// API, falling back to the layers. A download that fails fails the
	// update: the service is reported failed with a failed update event.
	// Summary.Images counts what was downloaded.
	PullImages bool
	// Architecture is the devices' architecture in Flock's spelling
	// (amd64, arm64, armv7, armv6, i386, riscv64). When set the devices
	// register with it (it must be their fleet's) and take its manifest
	// from an image index; when not, an index must hold a single linux
	// image.
	Architecture string
	// LayerDir keeps each device's uncompressed layers as files under
	// <LayerDir>/<device uuid>/ (removed when the device stops) instead
	// of in memory.
	LayerDir string
	// RegistryTransport, when set, carries the devices' registry requests
	// (the registry host named by image references, and its token realm).
	// Tests map the deployment's public host to the test server with it.
	RegistryTransport http.RoundTripper
	// RegistryAddr, when set and RegistryTransport is not, is the
	// host:port the devices dial for every registry request, for a
	// deployment whose public host does not resolve from here.
	RegistryAddr string
	// Tunnel makes each device register a WireGuard key and keep a tunnel
	// to the deployment's tunnel replicas up (wireguard-go on a userspace
	// netstack): on its overlay address it serves a small web server on
	// WebPort (/, /bytes?n=, POST /echo, a WebSocket echo at /ws) and
	// relays each TunnelForward port to a local address (22 to a local
	// sshd, say).
	Tunnel        bool
	TunnelForward map[uint16]string
	// TunnelEndpoint overrides the WireGuard endpoint registration names,
	// for a deployment whose public host does not resolve from here.
	TunnelEndpoint string
	// OnImage, when set, is called with each image a device fetched, on
	// that device's goroutine (so from many at once).
	OnImage func(ImageFetched)
}

// Validate reports the first setting Run would refuse.
func (c *Config) Validate() error {
	u, err := url.Parse(c.API)
	switch {
	case c.API == "":
		return errors.New("simulate: the API URL is required")
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return fmt.Errorf("simulate: API URL %q: want http(s)://host[:port]", c.API)
	case c.ProvisioningKey == "":
		return errors.New("simulate: a provisioning key is required")
	case c.Devices < 1:
		return fmt.Errorf("simulate: devices must be at least 1, not %d", c.Devices)
	case c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0):
		return fmt.Errorf("simulate: rate must be a non-negative number of messages per second, not %v", c.Rate)
	case c.Duration < 0:
		return fmt.Errorf("simulate: duration %s is negative", c.Duration)
	case c.Concurrency < 0:
		return fmt.Errorf("simulate: concurrency %d is negative", c.Concurrency)
	case c.SummaryEvery < 0:
		return fmt.Errorf("simulate: summary interval %s is negative", c.SummaryEvery)
	case c.StepTime < 0:
		return fmt.Errorf("simulate: step time %s is negative", c.StepTime)
	case c.LockFor < 0:
		return fmt.Errorf("simulate: lock time %s is negative", c.LockFor)
	case !isShare(c.LockShare):
		return fmt.Errorf("simulate: lock share must be between 0 and 1, not %v", c.LockShare)
	case !isShare(c.FailShare):
		return fmt.Errorf("simulate: fail share must be between 0 and 1, not %v", c.FailShare)
	case c.Architecture != "" && !knownArchitecture(c.Architecture):
		return fmt.Errorf("simulate: architecture %q: want amd64, arm64, armv7, armv6, i386 or riscv64", c.Architecture)
	case len(c.Name) > maxNameLen || (c.Name != "" && strings.TrimSpace(c.Name) == ""):
		return fmt.Errorf("simulate: name prefix must be 1 to %d characters, not all spaces", maxNameLen)
	}
	if c.RegistryAddr != "" {
		if host, port, err := net.SplitHostPort(c.RegistryAddr); err != nil || host == "" || port == "" {
			return fmt.Errorf("simulate: registry address %q: want host:port", c.RegistryAddr)
		}
	}
	if c.MQTTURL != "" {
		if _, err := parseMQTTURL(c.MQTTURL); err != nil {
			return fmt.Errorf("simulate: MQTT URL: %w", err)
		}
	}
	return nil
}

// knownArchitecture reports whether arch is one of Flock's architectures.
func knownArchitecture(arch string) bool {
	_, ok := registry.Platform(arch)
	return ok
}

// isShare reports whether v is a share of the devices: 0 to 1.
func isShare(v float64) bool { return v >= 0 && v <= 1 } // false for NaN

// parseMQTTURL accepts the schemes autopaho dials.
func parseMQTTURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	switch strings.ToLower(u.Scheme) {
	case "mqtt", "tcp", "mqtts", "tls", "ssl", "ws", "wss":
	default:
		return nil, fmt.Errorf("%q: want mqtt://, mqtts://, ws:// or wss://", s)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%q has no host", s)
	}
	return u, nil
}

// Published counts acknowledged messages by kind.
type Published struct {
	State, Telemetry, Logs, Events, Status, CommandResults int64
}

// Total is the sum over kinds.
func (p Published) Total() int64 {
	return p.State + p.Telemetry + p.Logs + p.Events + p.Status + p.CommandResults
}

// Summary is what the simulated devices did.
type Summary struct {
	Elapsed time.Duration
	Devices int
	// Registered devices got a registration (201 or 200).
	Registered int64
	// Connected devices connected at least once; Online are connected now.
	Connected, Online int64
	// Reconnects are connections after a device's first.
	Reconnects int64
	// ConnectRefused counts CONNACKs refusing a device; ConnectErrors other
	// failed connection attempts (network, token).
	ConnectRefused, ConnectErrors int64
	// TokensIssued counts device tokens obtained; Reauths the tokens handed
	// over on an open connection (MQTT v5 re-authentication).
	TokensIssued, Reauths int64
	Published             Published
	// PublishRefused counts negative PUBACKs (rate limit, ACL), each
	// refusal once: a state or update event refused for the device's rate
	// is sent again, and counted again if refused again. PublishErrors
	// counts other failed publishes (timeouts, lost connections).
	PublishRefused, PublishErrors int64
	// NudgesReceived and CommandsReceived count messages from the cloud.
	NudgesReceived, CommandsReceived int64
	// CommandsSucceeded and CommandsFailed count commands carried out (a
	// redelivered command counts once), by outcome.
	CommandsSucceeded, CommandsFailed int64
	// TargetsFetched counts target states received (200); TargetsUnchanged
	// 304s; TargetErrors failed fetches.
	TargetsFetched, TargetsUnchanged, TargetErrors int64
	// UpdatesDone counts updates that ended with the release running;
	// UpdatesFailed those that ended with a service failed; UpdatesLocked
	// updates that waited for an update lock first (they count as done or
	// failed too once they end).
	UpdatesDone, UpdatesLocked, UpdatesFailed int64
	// Images counts what the devices downloaded for their images; nil
	// unless Config.PullImages.
	Images *ImageSummary
	// Tunnels counts devices with their WireGuard tunnel up (registered
	// and the client running; Config.Tunnel).
	Tunnels int64
}

// String is the summary as one line of key=value pairs.
func (s Summary) String() string {
	p := s.Published
	return fmt.Sprintf("t=%s devices=%d registered=%d connected=%d online=%d reconnects=%d connect_refused=%d connect_errors=%d reauths=%d "+
		"published=%d state=%d telemetry=%d logs=%d events=%d status=%d command_results=%d publish_refused=%d publish_errors=%d "+
		"nudges=%d commands=%d commands_succeeded=%d commands_failed=%d targets_fetched=%d targets_unchanged=%d target_errors=%d updates_done=%d updates_locked=%d updates_failed=%d",
		s.Elapsed.Round(100*time.Millisecond), s.Devices, s.Registered, s.Connected, s.Online, s.Reconnects, s.ConnectRefused, s.ConnectErrors, s.Reauths,
		p.Total(), p.State, p.Telemetry, p.Logs, p.Events, p.Status, p.CommandResults, s.PublishRefused, s.PublishErrors,
		s.NudgesReceived, s.CommandsReceived, s.CommandsSucceeded, s.CommandsFailed, s.TargetsFetched, s.TargetsUnchanged, s.TargetErrors,
		s.UpdatesDone, s.UpdatesLocked, s.UpdatesFailed) + s.imagesString()
}

func (s Summary) imagesString() string {
	if s.Images == nil {
		return ""
	}
	return " " + s.Images.String()
}

// counters are updated by every device at once.
type counters struct {
	registered, connected, online, reconnects, connectRefused, connectErrors, tokens, reauths atomic.Int64
	state, telemetry, logs, events, status                                                    atomic.Int64
	publishRefused, publishErrors                                                             atomic.Int64
	nudges, commands, commandsSucceeded, commandsFailed                                       atomic.Int64
	commandResults                                                                            atomic.Int64
	targetsFetched, targetsUnchanged, targetErrors                                            atomic.Int64
	updatesDone, updatesLocked, updatesFailed                                                 atomic.Int64
	tunnels                                                                                   atomic.Int64
}

func (c *counters) published(kind string) *atomic.Int64 {
	switch kind {
	case devicetopic.State:
		return &c.state
	case devicetopic.Telemetry:
		return &c.telemetry
	case devicetopic.Logs:
		return &c.logs
	case devicetopic.Events:
		return &c.events
	case devicetopic.CommandResults:
		return &c.commandResults
	default:
		return &c.status
	}
}

func (s *simulation) snapshot(elapsed time.Duration) Summary {
	sum := s.stats.snapshot(s.cfg.Devices, elapsed)
	if s.cfg.PullImages {
		sum.Images = s.images.snapshot()
	}
	return sum
}

func (c *counters) snapshot(devices int, elapsed time.Duration) Summary {
	return Summary{
		Elapsed: elapsed, Devices: devices,
		Registered: c.registered.Load(), Connected: c.connected.Load(), Online: c.online.Load(),
		Reconnects: c.reconnects.Load(), ConnectRefused: c.connectRefused.Load(), ConnectErrors: c.connectErrors.Load(),
		TokensIssued: c.tokens.Load(), Reauths: c.reauths.Load(),
		Published: Published{State: c.state.Load(), Telemetry: c.telemetry.Load(), Logs: c.logs.Load(),
			Events: c.events.Load(), Status: c.status.Load(), CommandResults: c.commandResults.Load()},
		PublishRefused: c.publishRefused.Load(), PublishErrors: c.publishErrors.Load(),
		NudgesReceived: c.nudges.Load(), CommandsReceived: c.commands.Load(),
		CommandsSucceeded: c.commandsSucceeded.Load(), CommandsFailed: c.commandsFailed.Load(),
		TargetsFetched: c.targetsFetched.Load(), TargetsUnchanged: c.targetsUnchanged.Load(), TargetErrors: c.targetErrors.Load(),
		UpdatesDone: c.updatesDone.Load(), UpdatesLocked: c.updatesLocked.Load(), UpdatesFailed: c.updatesFailed.Load(),
		Tunnels: c.tunnels.Load(),
	}
}

// simulation is what the devices of one Run share.
type simulation struct {
	cfg      Config
	log      *slog.Logger
	api      *client.ClientWithResponses
	mqttURL  *url.URL      // Config.MQTTURL parsed, nil when unset
	interval time.Duration // mean time between a device's periodic messages; 0 for none
	limiter  *rate.Limiter // paces every publish to Config.Rate; nil for none
	sem      chan struct{} // registration and first-connect slots
	lockFor  time.Duration // Config.LockFor or its default
	stats    counters

	// Images (Config.PullImages).
	images           imageCounters
	registryRT       http.RoundTripper
	insecureRegistry bool           // the deployment is plain HTTP: so is its registry
	deltaAPI         *client.Client // no overall timeout: a delta may take long to download

	warned sync.Map // problems already logged at Warn

	errOnce sync.Once
	err     error
	cancel  context.CancelFunc
}

// fail records the first error that ends the run, and ends it.
func (s *simulation) fail(err error) {
	s.errOnce.Do(func() { s.err = err })
	s.cancel()
}

// warn logs a kind of problem at Warn the first time and at Debug after, so
// a thousand devices hitting the same wall give one line; the counters in
// the summary say how often.
func (s *simulation) warn(key, msg string, args ...any) {
	level := slog.LevelDebug
	if _, seen := s.warned.LoadOrStore(key, true); !seen {
		level = slog.LevelWarn
	}
	s.log.Log(context.Background(), level, msg, args...)
}

// Run simulates cfg.Devices devices until ctx ends or cfg.Duration passes,
// writing a summary line to cfg.Out every cfg.SummaryEvery and a final one,
// and returns the final summary. Every device publishes its offline status
// and disconnects before Run returns. The error is nil after a normal end;
// otherwise it says why the run could not go on (a bad configuration, a
// refused registration, no broker to connect to).
func Run(ctx context.Context, cfg Config) (Summary, error) {
	if err := cfg.Validate(); err != nil {
		return Summary{}, err
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.SummaryEvery == 0 {
		cfg.SummaryEvery = DefaultSummaryEvery
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}

	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = cfg.Concurrency
	defer transport.CloseIdleConnections()
	api, err := client.NewClientWithResponses(cfg.API, client.WithHTTPClient(&http.Client{Transport: transport, Timeout: httpTimeout}))
	if err != nil {
		return Summary{}, fmt.Errorf("simulate: API client: %w", err)
	}

	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Duration)
		defer cancel()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s := &simulation{cfg: cfg, log: cfg.Log, api: api, sem: make(chan struct{}, cfg.Concurrency), cancel: cancel}
	s.lockFor = cfg.LockFor
	if s.lockFor == 0 {
		s.lockFor = DefaultLockFor
	}
	if cfg.PullImages {
		rt, closeRT := registryTransport(cfg)
		defer closeRT()
		s.registryRT = rt
		s.insecureRegistry = strings.HasPrefix(strings.ToLower(cfg.API), "http://")
		// Deltas may take longer to download than httpTimeout allows; ctx
		// bounds them.
		if s.deltaAPI, err = client.NewClient(cfg.API, client.WithHTTPClient(&http.Client{Transport: transport})); err != nil {
			return Summary{}, fmt.Errorf("simulate: API client: %w", err)
		}
	}
	if cfg.MQTTURL != "" {
		s.mqttURL, _ = parseMQTTURL(cfg.MQTTURL) // checked above
	}
	if cfg.Rate > 0 {
		s.interval = time.Duration(float64(cfg.Devices) / cfg.Rate * float64(time.Second))
		s.limiter = rate.NewLimiter(rate.Limit(cfg.Rate), int(math.Ceil(cfg.Rate/10)))
	}

	start := time.Now()
	stopSummaries := make(chan struct{})
	var summaries sync.WaitGroup
	summaries.Go(func() { s.printSummaries(start, stopSummaries) })

	var devices sync.WaitGroup
	for i := range cfg.Devices {
		devices.Go(func() {
			if err := runDevice(ctx, s, i); err != nil {
				s.fail(err)
			}
		})
	}
	devices.Wait()
	close(stopSummaries)
	summaries.Wait()

	sum := s.snapshot(time.Since(start))
	fmt.Fprintf(cfg.Out, "final %s rate=%.1f/s\n", sum, perSecond(sum.Published.Total(), sum.Elapsed))
	return sum, s.err
}

// printSummaries writes a line every SummaryEvery until stop is closed.
func (s *simulation) printSummaries(start time.Time, stop <-chan struct{}) {
	t := time.NewTicker(s.cfg.SummaryEvery)
	defer t.Stop()
	var last int64
	lastAt := start
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			sum := s.snapshot(now.Sub(start))
			total := sum.Published.Total()
			fmt.Fprintf(s.cfg.Out, "%s rate=%.1f/s\n", sum, perSecond(total-last, now.Sub(lastAt)))
			last, lastAt = total, now
			if s.cfg.OnSummary != nil {
				s.cfg.OnSummary(sum)
			}
		}
	}
}

func perSecond(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}
