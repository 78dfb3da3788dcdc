// Package config defines every setting of flock-api in one place: its flag,
// its FLOCK_* environment variable, its default and how it is checked. A flag
// on the command line beats the environment, which beats the default.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Config is the effective configuration of one process.
type Config struct {
	Target        string
	Dev           bool
	HTTPAddr      string
	HTTPBodyLimit ByteSize
	DatabaseURL   string
	LogLevel      string
	LogFormat     string
	ShutdownGrace time.Duration
	ShutdownDelay time.Duration
	PublicURL     string
	OIDCIssuer    string
	OIDCAudience  string
	LokiURL       string

	RedisURL      string
	KafkaBrokers  string
	ClickHouseURL string
	// TelemetryRetention is how long samples, log lines, connectivity and
	// update events are kept; 0 keeps them for ever.
	TelemetryRetention time.Duration
	// StreamRecheck is how often an open stream checks that its caller may
	// still read it.
	StreamRecheck time.Duration

	// DataDir holds what the embedded engines keep on disk (registry
	// blobs and manifests, S3 objects) and the delta worker's spool.
	DataDir string

	RegistryURL      string
	RegistryUsername string
	RegistryPassword string
	// RegistryHost is the registry-proxy's host[:port] as devices and users
	// reach it: image references in target states start with it.
	RegistryHost string
	// RegistryCacheDir and RegistryCacheSize are the registry-proxy's disk
	// cache of pulled layer blobs (an upstream registry only).
	RegistryCacheDir  string
	RegistryCacheSize ByteSize

	S3Endpoint  string
	S3Bucket    string
	S3Region    string
	S3AccessKey string
	S3SecretKey string

	// DeltaMaxRatio is the largest share of the layers' download size a
	// delta may have; a larger delta is not stored and devices pull layers.
	DeltaMaxRatio float64

	// Builds: the upload limit, one image's wall-clock limit, a log's size
	// limit, how long an image waits for a builder able to take it, and the
	// builder replica's own settings.
	BuildMaxUpload       ByteSize
	BuildTimeout         time.Duration
	BuildLogLimit        ByteSize
	BuildQueueTimeout    time.Duration
	BuilderArchitectures string
	BuilderRegistry      string
	BuilderInsecure      bool
	// BuilderInsecureRegistries are other registries (base images) that
	// builds reach over plain HTTP.
	BuilderInsecureRegistries string

	// Remote access: the tunnel replica's WireGuard server, the internal
	// plane between replicas, session limits, and the proxy target.
	TunnelListen               string
	TunnelEndpoint             string
	TunnelPrefix               string
	TunnelPrivateKey           string
	TunnelReplica              string
	InternalURL                string
	InternalHost               string
	InternalToken              string
	TunnelMaxSessionsPerDevice int
	TunnelMaxSessionsPerUser   int
	DeviceURLDomain            string
	ProxyAddr                  string
	ProxyTLSCert               string
	ProxyTLSKey                string

	// Events for customers: the key sealing endpoints' secrets, the SSRF
	// switch for development, retries, disabling, retention, the
	// gateway's concurrency.
	EventsEncryptionKey string
	EventsAllowPrivate  bool
	EventsRetrySchedule string
	EventsDisableAfter  time.Duration
	EventsRetention     time.Duration
	EventsTimeout       time.Duration
	EventsWorkers       int
	EventsPerEndpoint   int

	MQTTURL           string
	MQTTListen        string
	MQTTPublicURL     string
	MQTTUsername      string
	MQTTPassword      string
	MQTTHookToken     string
	MQTTDeviceRate    float64
	IngestBatchSize   int
	IngestFlushPeriod time.Duration
}

// Setting describes one configurable value.
type Setting struct {
	Flag   string
	Usage  string
	Secret bool
	value  flag.Value
	def    string
	source string
}

// Env is the environment variable that overrides the flag's default.
func (s *Setting) Env() string {
	return "FLOCK_" + strings.ToUpper(strings.ReplaceAll(s.Flag, "-", "_"))
}

// Settings binds a Config to a flag set and remembers where each value came from.
type Settings struct {
	cfg  *Config
	list []*Setting
}

// Error is a bad setting; its message is the one line the process exits with.
type Error struct {
	Setting string
	Err     error
}

func (e *Error) Error() string { return fmt.Sprintf("invalid %s: %v", e.Setting, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// Register adds every setting to fs, with defaults, and returns the binding.
func Register(fs *flag.FlagSet) *Settings {
	c := &Config{}
	s := &Settings{cfg: c}
	add := func(name, def, usage string, v flag.Value, secret bool) {
		if err := v.Set(def); err != nil {
			panic(fmt.Sprintf("default of %s: %v", name, err))
		}
		fs.Var(v, name, usage)
		s.list = append(s.list, &Setting{Flag: name, Usage: usage, Secret: secret, value: v, def: def, source: "default"})
	}
	add("target", "all", "targets to mount: one name, a comma list, or all", (*stringValue)(&c.Target), false)
	add("dev", "false", "dev mode: migrate at start, human-readable logs", (*boolValue)(&c.Dev), false)
	add("http-addr", ":8080", "HTTP listen address (API, probes, metrics)", (*stringValue)(&c.HTTPAddr), false)
	add("http-body-limit", "1MiB", "largest request body accepted (bytes, or with KiB/MiB/GiB)", &c.HTTPBodyLimit, false)
	add("database-url", "postgres://postgres@127.0.0.1:5432/flock?sslmode=disable", "PostgreSQL connection URL", (*stringValue)(&c.DatabaseURL), true)
	add("log-level", "info", "log level: debug, info, warn or error", (*stringValue)(&c.LogLevel), false)
	add("log-format", "", "log format: json or text (default json, text in dev mode)", (*stringValue)(&c.LogFormat), false)
	add("shutdown-grace", "25s", "how long in-flight requests may take to finish after SIGTERM", (*durationValue)(&c.ShutdownGrace), false)
	add("public-url", "http://127.0.0.1:8080", "how devices and users reach this deployment", (*stringValue)(&c.PublicURL), false)
	add("oidc-issuer", "", "OpenID Connect issuer of user tokens (Zitadel); required outside dev mode", (*stringValue)(&c.OIDCIssuer), false)
	add("oidc-audience", "", "audience user tokens must carry (Zitadel: the project id); required with an issuer", (*stringValue)(&c.OIDCAudience), false)
	add("loki-url", "", "Loki push endpoint (http://loki:3100/loki/api/v1/push) that also receives the audit log; unset = PostgreSQL only", (*stringValue)(&c.LokiURL), true)
	add("redis-url", "", "Redis for live device state (redis://host:6379/0, or a cluster: redis+cluster://host1:7000,host2:7001); unset = in-process store", (*stringValue)(&c.RedisURL), true)
	add("kafka-brokers", "", "Kafka seed brokers, comma separated (host:9092,...); unset = in-process kfake cluster", (*stringValue)(&c.KafkaBrokers), false)
	add("clickhouse-url", "", "ClickHouse for telemetry, logs and connectivity (clickhouse://host:9000/flock); unset = PostgreSQL tables", (*stringValue)(&c.ClickHouseURL), true)
	add("telemetry-retention", "720h", "how long telemetry, container logs, connectivity and update events are kept (whole days on ClickHouse); 0 keeps them for ever", (*durationValue)(&c.TelemetryRetention), false)
	add("stream-recheck", "30s", "how often an open event stream checks that its caller is still a member (or its API key still valid); a removed member's streams end within this", (*durationValue)(&c.StreamRecheck), false)
	add("data-dir", "flock-data", "folder for what embedded engines keep on disk (registry, S3 objects) and the delta worker's scratch files", (*stringValue)(&c.DataDir), false)
	add("registry-url", "", "upstream OCI registry behind the registry-proxy (Harbor: https://harbor.example.com); unset = embedded registry under --data-dir", (*stringValue)(&c.RegistryURL), false)
	add("registry-username", "", "robot account user name for the upstream registry", (*stringValue)(&c.RegistryUsername), false)
	add("registry-password", "", "robot account secret for the upstream registry", (*stringValue)(&c.RegistryPassword), true)
	add("registry-host", "", "host[:port] devices and users reach the registry-proxy at (image references start with it); unset = the public URL's host", (*stringValue)(&c.RegistryHost), false)
	add("registry-cache-size", "8GiB", "disk the registry-proxy may use to keep pulled layer blobs and serve them again without the upstream registry's bandwidth (bytes, or with KiB/MiB/GiB); 0 = no cache; never used with the embedded registry", &c.RegistryCacheSize, false)
	add("registry-cache-dir", "", "folder of the registry-proxy's blob cache (an emptyDir in Kubernetes); unset = registry-cache under --data-dir", (*stringValue)(&c.RegistryCacheDir), false)
	add("s3-endpoint", "", "S3-compatible endpoint for deltas and build logs (https://s3.eu-west-1.amazonaws.com, http://minio:9000); unset = embedded store under --data-dir", (*stringValue)(&c.S3Endpoint), false)
	add("s3-bucket", "flock", "S3 bucket (created when missing)", (*stringValue)(&c.S3Bucket), false)
	add("s3-region", "us-east-1", "S3 region", (*stringValue)(&c.S3Region), false)
	add("s3-access-key", "", "S3 access key id; unset with an endpoint = the SDK's default credential chain", (*stringValue)(&c.S3AccessKey), false)
	add("s3-secret-key", "", "S3 secret access key", (*stringValue)(&c.S3SecretKey), true)
	add("delta-max-ratio", "0.8", "a delta larger than this share of the layers it replaces is not kept: devices pull the layers", (*floatValue)(&c.DeltaMaxRatio), false)
	add("build-max-upload", "512MiB", "largest project upload a build accepts (413 above)", &c.BuildMaxUpload, false)
	add("build-timeout", "1h", "wall-clock limit of building and pushing one image", (*durationValue)(&c.BuildTimeout), false)
	add("build-log-limit", "16MiB", "largest build log kept (as text); later lines are dropped and the log says so", &c.BuildLogLimit, false)
	add("build-queue-timeout", "15m", "how long an image waits for a running builder able to build its architecture before the build fails (no_builder)", (*durationValue)(&c.BuildQueueTimeout), false)
	add("builder-architectures", "", "architectures this builder runs RUN steps for (comma list); unset = the host's own plus those with a qemu binfmt_misc handler", (*stringValue)(&c.BuilderArchitectures), false)
	add("builder-registry", "", "host[:port] where buildah reaches the registry-proxy; unset = the registry host", (*stringValue)(&c.BuilderRegistry), false)
	add("builder-insecure-registries", "", "other registries (host:port, comma list) builds pull base images from over plain HTTP (development)", (*stringValue)(&c.BuilderInsecureRegistries), false)
	add("builder-insecure", "false", "buildah talks to the registry-proxy over plain HTTP (development; the embedded default serves HTTP)", (*boolValue)(&c.BuilderInsecure), false)
	add("tunnel-listen", ":51820", "UDP address of the tunnel replica's WireGuard server (only the port is used: it listens on every address)", (*stringValue)(&c.TunnelListen), false)
	add("tunnel-endpoint", "", "host:port devices send WireGuard to (the tunnel replicas' UDP load balancer); unset = the public URL's host and the tunnel port", (*stringValue)(&c.TunnelEndpoint), false)
	add("tunnel-prefix", "fd66:6c6b:7475:6e00::/64", "the overlay network devices get addresses in (IPv6 ULA, or e.g. 100.64.0.0/10)", (*stringValue)(&c.TunnelPrefix), false)
	add("tunnel-private-key", "", "the tunnel servers' WireGuard private key (wg genkey), the same on every replica; unset = made once and kept in PostgreSQL", (*stringValue)(&c.TunnelPrivateKey), true)
	add("tunnel-replica", "", "this tunnel replica's name in the KV store; unset = host name and process id", (*stringValue)(&c.TunnelReplica), false)
	add("internal-url", "", "how other replicas reach this process's HTTP server (http://pod-ip:8080); unset = http://<internal host>:<http port>", (*stringValue)(&c.InternalURL), false)
	add("internal-host", "", "the address other replicas reach this process at when --internal-url is unset (a pod IP, IPv4 or IPv6); unset = 127.0.0.1", (*stringValue)(&c.InternalHost), false)
	add("internal-token", "", "shared secret of the internal plane between replicas (tunnel dials); unset = each process reaches only the devices its own tunnel replica holds", (*stringValue)(&c.InternalToken), true)
	add("tunnel-max-sessions-per-device", "8", "most tunnel sessions open to one device at once", (*intValue)(&c.TunnelMaxSessionsPerDevice), false)
	add("tunnel-max-sessions-per-user", "16", "most tunnel sessions one user or API key has open at once", (*intValue)(&c.TunnelMaxSessionsPerUser), false)
	add("device-url-domain", "", "devices' public URLs are <uuid>.<this domain> (devices.example.com); unset = the proxy target is refused", (*stringValue)(&c.DeviceURLDomain), false)
	add("proxy-addr", ":8081", "listen address of the proxy target (devices' public URLs)", (*stringValue)(&c.ProxyAddr), false)
	add("proxy-tls-cert", "", "wildcard certificate (PEM) of *.<device URL domain>; reloaded when the file changes; unset = plain HTTP", (*stringValue)(&c.ProxyTLSCert), false)
	add("proxy-tls-key", "", "its private key (PEM)", (*stringValue)(&c.ProxyTLSKey), false)
	add("events-encryption-key", "", "32 bytes, base64 (openssl rand -base64 32), sealing event endpoints' signing secrets and Kafka passwords at rest; required for event endpoints outside dev mode", (*stringValue)(&c.EventsEncryptionKey), true)
	add("events-allow-private", "false", "let webhooks and Kafka endpoints reach loopback, private and link-local addresses (development; refused otherwise, against SSRF)", (*boolValue)(&c.EventsAllowPrivate), false)
	add("events-retry-schedule", "5s,5m,30m,2h,5h,10h", "waits before each retry of a failed delivery (each with ±20% jitter); after the last the delivery fails", (*stringValue)(&c.EventsRetrySchedule), false)
	add("events-disable-after", "72h", "an endpoint whose every delivery failed for this long is disabled and its organisation told", (*durationValue)(&c.EventsDisableAfter), false)
	add("events-retention", "168h", "how long organisations' events are kept for the WebSocket feed and replays", (*durationValue)(&c.EventsRetention), false)
	add("events-timeout", "10s", "a webhook must answer 2xx within this", (*durationValue)(&c.EventsTimeout), false)
	add("events-workers", "64", "deliveries one events-gateway replica attempts at once", (*intValue)(&c.EventsWorkers), false)
	add("events-per-endpoint", "8", "deliveries to one endpoint in flight at once, across replicas", (*intValue)(&c.EventsPerEndpoint), false)
	add("mqtt-url", "", "external MQTT broker the ingester subscribes to (mqtt://host:1883 or mqtts://...); unset = embedded broker", (*stringValue)(&c.MQTTURL), false)
	add("mqtt-listen", ":1883", "listen address of the embedded MQTT broker (when --mqtt-url is unset)", (*stringValue)(&c.MQTTListen), false)
	add("mqtt-public-url", "", "MQTT URL devices are told at registration; unset = the embedded broker's port on the public URL's host", (*stringValue)(&c.MQTTPublicURL), false)
	add("mqtt-username", "flock-ingester", "MQTT user name of the ingester (the broker's trusted service user)", (*stringValue)(&c.MQTTUsername), false)
	add("mqtt-password", "", "MQTT password of the ingester; required with --mqtt-url, random per process for the embedded broker", (*stringValue)(&c.MQTTPassword), true)
	add("mqtt-hook-token", "", "bearer token an external broker must send to /internal/v1/mqtt/*; unset = those hooks are open (restrict them at the network)", (*stringValue)(&c.MQTTHookToken), true)
	add("mqtt-device-rate", "20", "messages per second each device may publish to the embedded broker (burst: twice that)", (*floatValue)(&c.MQTTDeviceRate), false)
	add("ingest-batch-size", "500", "most messages the ingester writes in one batch", (*intValue)(&c.IngestBatchSize), false)
	add("ingest-flush-period", "20ms", "longest a message waits for company while the ingester is not writing a batch", (*durationValue)(&c.IngestFlushPeriod), false)
	add("shutdown-delay", "0s", "how long /readyz reports 503 before draining starts (give load balancers time to notice)", (*durationValue)(&c.ShutdownDelay), false)
	return s
}

// RegistryPublicHost is the host[:port] image references name: the
// registry-proxy as devices and users reach it.
func (c *Config) RegistryPublicHost() string {
	if c.RegistryHost != "" {
		return c.RegistryHost
	}
	if u, err := url.Parse(c.PublicURL); err == nil && u.Host != "" {
		return u.Host
	}
	return "127.0.0.1:8080"
}

// Config returns the bound configuration.
func (s *Settings) Config() *Config { return s.cfg }

// List returns the settings in declaration order.
func (s *Settings) List() []*Setting { return s.list }

// Resolve applies FLOCK_* variables to every flag not given on the command
// line (fs must be parsed already), then validates the result.
func (s *Settings) Resolve(fs *flag.FlagSet, getenv func(string) string) error {
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	for _, st := range s.list {
		if explicit[st.Flag] {
			st.source = "flag"
			continue
		}
		if v := getenv(st.Env()); v != "" {
			if err := st.value.Set(v); err != nil {
				return &Error{Setting: st.Env(), Err: err}
			}
			st.source = "env"
		}
	}
	// *.localhost resolves to the loopback in browsers and curl, so a
	// development proxy's device URLs work without DNS.
	if s.cfg.Dev && s.cfg.DeviceURLDomain == "" {
		s.cfg.DeviceURLDomain = "devices.localhost"
	}
	if s.cfg.LogFormat == "" {
		s.cfg.LogFormat = "json"
		if s.cfg.Dev {
			s.cfg.LogFormat = "text"
		}
	}
	return s.validate()
}

func (s *Settings) name(flagName string) string {
	for _, st := range s.list {
		if st.Flag == flagName {
			if st.source == "flag" {
				return "--" + st.Flag
			}
			return st.Env()
		}
	}
	return flagName
}

func (s *Settings) validate() error {
	c := s.cfg
	if err := checkListenAddr(c.HTTPAddr); err != nil {
		return &Error{Setting: s.name("http-addr"), Err: err}
	}
	if _, err := netip.ParsePrefix(c.TunnelPrefix); err != nil {
		return &Error{Setting: s.name("tunnel-prefix"), Err: err}
	}
	if c.TunnelMaxSessionsPerDevice <= 0 || c.TunnelMaxSessionsPerUser <= 0 {
		return &Error{Setting: s.name("tunnel-max-sessions-per-device"), Err: errors.New("session limits must be positive")}
	}
	if (c.ProxyTLSCert == "") != (c.ProxyTLSKey == "") {
		return &Error{Setting: s.name("proxy-tls-cert"), Err: errors.New("set both the certificate and its key, or neither")}
	}
	if _, err := ParseSchedule(c.EventsRetrySchedule); err != nil {
		return &Error{Setting: s.name("events-retry-schedule"), Err: err}
	}
	if c.EventsWorkers <= 0 || c.EventsPerEndpoint <= 0 || c.EventsTimeout <= 0 {
		return &Error{Setting: s.name("events-workers"), Err: errors.New("events workers, per-endpoint limit and timeout must be positive")}
	}
	if c.HTTPBodyLimit <= 0 {
		return &Error{Setting: s.name("http-body-limit"), Err: errors.New("must be positive")}
	}
	if u, err := url.Parse(c.DatabaseURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return &Error{Setting: s.name("database-url"), Err: errors.New("want a postgres:// URL")}
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return &Error{Setting: s.name("log-level"), Err: fmt.Errorf("%q: want debug, info, warn or error", c.LogLevel)}
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		return &Error{Setting: s.name("log-format"), Err: fmt.Errorf("%q: want json or text", c.LogFormat)}
	}
	if c.ShutdownGrace <= 0 {
		return &Error{Setting: s.name("shutdown-grace"), Err: errors.New("must be positive")}
	}
	if err := checkHTTPURL(c.PublicURL, true); err != nil {
		return &Error{Setting: s.name("public-url"), Err: err}
	}
	if err := checkHTTPURL(c.OIDCIssuer, false); err != nil {
		return &Error{Setting: s.name("oidc-issuer"), Err: err}
	}
	if c.OIDCIssuer != "" && c.OIDCAudience == "" {
		return &Error{Setting: s.name("oidc-audience"), Err: errors.New("required with an issuer (Zitadel: the project id)")}
	}
	if err := checkHTTPURL(c.LokiURL, false); err != nil {
		return &Error{Setting: s.name("loki-url"), Err: err}
	}
	if c.RedisURL != "" {
		// Only the scheme: a cluster's list of [IPv6]:port seeds is more
		// than net/url parses, and the kv module checks the rest at start.
		scheme, _, _ := strings.Cut(c.RedisURL, "://")
		switch strings.ToLower(scheme) {
		case "redis", "rediss":
			if _, err := url.Parse(c.RedisURL); err != nil {
				return &Error{Setting: s.name("redis-url"), Err: errors.New("want a redis:// or rediss:// URL")}
			}
		case "redis+cluster", "rediss+cluster":
		default:
			return &Error{Setting: s.name("redis-url"), Err: errors.New("want a redis:// or rediss:// URL, or redis+cluster://host1:port1,host2:port2 for a Redis Cluster")}
		}
	}
	for _, b := range c.KafkaSeeds() {
		if _, _, err := net.SplitHostPort(b); err != nil {
			return &Error{Setting: s.name("kafka-brokers"), Err: fmt.Errorf("%q: want host:port", b)}
		}
	}
	if c.ClickHouseURL != "" {
		if u, err := url.Parse(c.ClickHouseURL); err != nil || u.Scheme != "clickhouse" || u.Host == "" {
			return &Error{Setting: s.name("clickhouse-url"), Err: errors.New("want a clickhouse://host:9000/database URL (native protocol)")}
		}
	}
	for name, v := range map[string]string{"mqtt-url": c.MQTTURL, "mqtt-public-url": c.MQTTPublicURL} {
		if v == "" {
			continue
		}
		if u, err := url.Parse(v); err != nil || (u.Scheme != "mqtt" && u.Scheme != "mqtts" && u.Scheme != "tcp" && u.Scheme != "ssl" && u.Scheme != "tls") || u.Host == "" {
			return &Error{Setting: s.name(name), Err: fmt.Errorf("%q: want mqtt://host:port or mqtts://host:port", v)}
		}
	}
	if err := checkListenAddr(c.MQTTListen); err != nil {
		return &Error{Setting: s.name("mqtt-listen"), Err: err}
	}
	if c.MQTTUsername == "" {
		return &Error{Setting: s.name("mqtt-username"), Err: errors.New("required")}
	}
	if c.MQTTURL != "" && c.MQTTPassword == "" {
		return &Error{Setting: s.name("mqtt-password"), Err: errors.New("required with an external broker (--mqtt-url)")}
	}
	if c.MQTTDeviceRate <= 0 {
		return &Error{Setting: s.name("mqtt-device-rate"), Err: errors.New("must be positive")}
	}
	if c.IngestBatchSize < 1 {
		return &Error{Setting: s.name("ingest-batch-size"), Err: errors.New("must be positive")}
	}
	if c.IngestFlushPeriod <= 0 {
		return &Error{Setting: s.name("ingest-flush-period"), Err: errors.New("must be positive")}
	}
	if c.StreamRecheck <= 0 {
		return &Error{Setting: s.name("stream-recheck"), Err: errors.New("must be positive")}
	}
	if c.TelemetryRetention < 0 {
		return &Error{Setting: s.name("telemetry-retention"), Err: errors.New("must not be negative")}
	}
	if c.DataDir == "" {
		return &Error{Setting: s.name("data-dir"), Err: errors.New("required")}
	}
	if err := checkHTTPURL(c.RegistryURL, false); err != nil {
		return &Error{Setting: s.name("registry-url"), Err: err}
	}
	if c.RegistryHost != "" {
		if u, err := url.Parse("//" + c.RegistryHost); err != nil || u.Host != c.RegistryHost || u.Host == "" {
			return &Error{Setting: s.name("registry-host"), Err: fmt.Errorf("%q: want host or host:port", c.RegistryHost)}
		}
	}
	if c.RegistryCacheSize < 0 {
		return &Error{Setting: s.name("registry-cache-size"), Err: errors.New("must not be negative")}
	}
	if c.RegistryCacheDir == "" {
		c.RegistryCacheDir = filepath.Join(c.DataDir, "registry-cache")
	}
	if err := checkHTTPURL(c.S3Endpoint, false); err != nil {
		return &Error{Setting: s.name("s3-endpoint"), Err: err}
	}
	if c.S3Bucket == "" {
		return &Error{Setting: s.name("s3-bucket"), Err: errors.New("required")}
	}
	if c.DeltaMaxRatio <= 0 || c.DeltaMaxRatio > 1 {
		return &Error{Setting: s.name("delta-max-ratio"), Err: errors.New("want a share above 0 and at most 1")}
	}
	if c.ShutdownDelay < 0 {
		return &Error{Setting: s.name("shutdown-delay"), Err: errors.New("must not be negative")}
	}
	return nil
}

// CheckServe adds the checks that only matter for running the server (not
// for --print-config or --list-targets): what must be set outside dev mode.
func (s *Settings) CheckServe() error {
	if s.cfg.OIDCIssuer == "" && !s.cfg.Dev {
		return &Error{Setting: s.name("oidc-issuer"),
			Err: errors.New("required outside dev mode (the OpenID Connect issuer, e.g. your Zitadel instance)")}
	}
	return nil
}

// checkHTTPURL accepts an absolute http(s) URL, or "" when not required.
func checkHTTPURL(v string, required bool) error {
	if v == "" {
		if required {
			return errors.New("required")
		}
		return nil
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q: want an absolute http or https URL", v)
	}
	return nil
}

func checkListenAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: want host:port or :port", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port must be a number from 0 to 65535", addr)
	}
	if host != "" && net.ParseIP(host) == nil && strings.ContainsAny(host, " /") {
		return fmt.Errorf("%q: bad host", addr)
	}
	return nil
}

// Print writes the effective configuration, one setting a line, with secrets
// redacted and the source of each value.
func (s *Settings) Print(w io.Writer) {
	for _, st := range s.list {
		v := st.value.String()
		if st.Flag == "log-format" && st.source == "default" {
			v = s.cfg.LogFormat
		}
		if st.Secret {
			v = redact(v)
		}
		fmt.Fprintf(w, "%-18s %-28s %-8s %s\n", st.Flag, st.Env(), st.source, strconv.Quote(v))
	}
}

// redact hides a URL's password, or the whole value when it is not a URL.
func redact(v string) string {
	if v == "" {
		return v
	}
	u, err := url.Parse(v)
	if err != nil || u.Scheme == "" {
		return "REDACTED"
	}
	return u.Redacted()
}

// Usage prints every setting with its environment variable and default.
func (s *Settings) Usage(w io.Writer) {
	list := append([]*Setting(nil), s.list...)
	sort.SliceStable(list, func(i, j int) bool { return list[i].Flag < list[j].Flag })
	for _, st := range list {
		fmt.Fprintf(w, "  --%s (%s, default %q)\n      %s\n", st.Flag, st.Env(), st.def, st.Usage)
	}
}

type stringValue string

func (v *stringValue) Set(s string) error { *v = stringValue(s); return nil }
func (v *stringValue) String() string     { return string(*v) }

type boolValue bool

func (v *boolValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("%q: want true or false", s)
	}
	*v = boolValue(b)
	return nil
}
func (v *boolValue) String() string   { return strconv.FormatBool(bool(*v)) }
func (v *boolValue) IsBoolFlag() bool { return true }

type durationValue time.Duration

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q: want a duration such as 30s or 2m", s)
	}
	*v = durationValue(d)
	return nil
}
func (v *durationValue) String() string { return time.Duration(*v).String() }

// ByteSize is a size in bytes, written as a number with an optional
// KiB, MiB or GiB suffix.
type ByteSize int64

func (b *ByteSize) Set(s string) error {
	mult := int64(1)
	num := strings.TrimSpace(s)
	for suf, m := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30} {
		if strings.HasSuffix(num, suf) {
			mult, num = m, strings.TrimSpace(strings.TrimSuffix(num, suf))
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("%q: want a byte count such as 1048576 or 1MiB", s)
	}
	*b = ByteSize(n * mult)
	return nil
}

func (b *ByteSize) String() string {
	n := int64(*b)
	switch {
	case n != 0 && n%(1<<30) == 0:
		return strconv.FormatInt(n>>30, 10) + "GiB"
	case n != 0 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "MiB"
	case n != 0 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + "KiB"
	}
	return strconv.FormatInt(n, 10)
}

type intValue int

func (v *intValue) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("%q: want a whole number", s)
	}
	*v = intValue(n)
	return nil
}
func (v *intValue) String() string { return strconv.Itoa(int(*v)) }

type floatValue float64

func (v *floatValue) Set(s string) error {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Errorf("%q: want a number", s)
	}
	*v = floatValue(f)
	return nil
}
func (v *floatValue) String() string { return strconv.FormatFloat(float64(*v), 'g', -1, 64) }

// KafkaSeeds splits KafkaBrokers; nil means the embedded cluster.
func (c *Config) KafkaSeeds() []string {
	var out []string
	for _, b := range strings.Split(c.KafkaBrokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// ParseSchedule reads a comma list of durations (FLOCK_EVENTS_RETRY_SCHEDULE).
func ParseSchedule(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, f := range strings.Split(s, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(f))
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("%q: want positive durations separated by commas (5s,5m,30m)", s)
		}
		out = append(out, d)
	}
	return out, nil
}
