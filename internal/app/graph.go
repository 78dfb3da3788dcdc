// Package app is the flock-api command: flags and environment, the module
// graph, the subcommands (migrate, dev-token, simulate), and running until
// a signal stops it. The graph is graph.go; the stores' inits stores.go; the
// API's wiring api.go; the device-messaging side (broker, ingester, relay)
// ingest.go; the API's background workers workers.go.
package app

import (
	"log/slog"
	"net/url"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/blob"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/config"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/http/httpserver"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/metrics"
	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/internal/mqtt/broker"
	"github.com/flock-io/flock-api/internal/registry"
	"github.com/flock-io/flock-api/internal/telemetry"
	"github.com/flock-io/flock-api/workers/commands"
	"github.com/flock-io/flock-api/workers/nudger"
)

// Module names. Hidden modules are plumbing; the rest are targets.
const (
	Config     = "config"
	Metrics    = "metrics"
	Postgres   = "postgres"
	Audit      = "audit"
	HTTPServer = "http-server"
	KV         = "kv"
	Kafka      = "kafka"
	Telemetry  = "telemetry-store"
	Tokens     = "device-tokens"
	MQTTBroker = "mqtt-broker"
	Nudger     = "nudger"
	Janitor    = "janitor"
	Relay      = "relay"
	Commands   = "commands"
	Authn      = "authn"
	Registry   = "registry"
	Blob       = "blob"

	API           = "api"
	Ingester      = "ingester"
	Scheduler     = "scheduler"
	RegistryProxy = "registry-proxy"
	Delta         = "delta"
	Builder       = "builder"
	Tunnel        = "tunnel"
	Proxy         = "proxy"
	EventsGateway = "events-gateway"
	All           = "all"
)

// table is the whole graph in one screen: each module once, with what it
// needs, whether --target may name it, and its init. A target appears only
// once it really works: an unfinished target is not mounted. all needs every
// target in the table.
func (a *App) table() []modules.Module {
	t := []modules.Module{
		{Name: Config, Hidden: true, Init: a.initConfig},
		{Name: Metrics, Hidden: true, Deps: []string{Config}, Init: a.initMetrics},
		{Name: Postgres, Hidden: true, Deps: []string{Config}, Init: a.initPostgres},
		{Name: Audit, Hidden: true, Deps: []string{Config, Metrics}, Init: a.initAudit},
		{Name: HTTPServer, Hidden: true, Deps: []string{Config, Metrics}, Init: a.initHTTPServer},
		{Name: KV, Hidden: true, Deps: []string{Config, Metrics}, Init: a.initKV},
		{Name: Kafka, Hidden: true, Deps: []string{Config, Metrics}, Init: a.initKafka},
		{Name: Telemetry, Hidden: true, Deps: []string{Config, Postgres}, Init: a.initTelemetry},
		{Name: Tokens, Hidden: true, Deps: []string{Config, Postgres}, Init: a.initDeviceTokens},
		{Name: MQTTBroker, Hidden: true, Deps: []string{Config, Postgres, Metrics, Tokens}, Init: a.initMQTTBroker},
		{Name: Nudger, Hidden: true, Deps: []string{Config, Postgres, Metrics, Kafka}, Init: a.initNudger},
		{Name: Janitor, Hidden: true, Deps: []string{Config, Postgres, Telemetry}, Init: a.initJanitor},
		{Name: Relay, Hidden: true, Deps: []string{Config, Metrics, Kafka, MQTTBroker}, Init: a.initRelay},
		{Name: Commands, Hidden: true, Deps: []string{Config, Postgres, Metrics, Kafka}, Init: a.initCommands},
		{Name: Authn, Hidden: true, Deps: []string{Config, Postgres, HTTPServer, Tokens}, Init: a.initAuthn},
		{Name: Registry, Hidden: true, Deps: []string{Config}, Init: a.initRegistry},
		{Name: Blob, Hidden: true, Deps: []string{Config}, Init: a.initBlob},

		{Name: API, Deps: []string{Config, Postgres, Metrics, Audit, HTTPServer, KV, Kafka, Telemetry, Tokens, Authn, Registry, Blob, Nudger, Janitor, Commands}, Init: a.initAPI},
		{Name: Ingester, Deps: []string{Config, Postgres, Metrics, HTTPServer, KV, Kafka, Telemetry, MQTTBroker, Relay}, Init: a.initIngester},
		{Name: Scheduler, Deps: []string{Config, Postgres, Metrics, Audit, HTTPServer, Kafka, Nudger}, Init: a.initScheduler},
		{Name: RegistryProxy, Deps: []string{Config, Postgres, Metrics, HTTPServer, Tokens, Authn, Registry}, Init: a.initRegistryProxy},
		{Name: Builder, Deps: []string{Config, Postgres, Metrics, HTTPServer, Kafka, Registry, Blob, Tokens, Nudger}, Init: a.initBuilder},
		{Name: Delta, Deps: []string{Config, Postgres, Metrics, HTTPServer, Kafka, Registry, Blob}, Init: a.initDelta},
		{Name: Tunnel, Deps: []string{Config, Postgres, Metrics, HTTPServer, KV}, Init: a.initTunnel},
		{Name: Proxy, Deps: []string{Config, Postgres, Metrics, HTTPServer, KV}, Init: a.initProxy},
		{Name: EventsGateway, Deps: []string{Config, Postgres, Metrics, HTTPServer, Kafka}, Init: a.initEventsGateway},
	}
	var targets []string
	for _, m := range t {
		if !m.Hidden {
			targets = append(targets, m.Name)
		}
	}
	return append(t, modules.Module{Name: All, Deps: targets, Init: modules.Group})
}

// App is the state the modules of one process share as they are wired.
type App struct {
	cfg     *config.Config
	log     *slog.Logger
	mgr     *modules.Manager
	targets []string // the visible modules being run, in start order

	ready   *httpserver.Readiness
	metrics *metrics.Metrics
	pool    *pgxpool.Pool
	server  *httpserver.Server
	audit   *audit.Recorder

	kv            kv.Store
	bus           *bus.Bus
	telemetry     telemetry.Store
	tokens        *devicetoken.Service
	authn         *auth.Authenticator
	registry      *registry.Registry
	blobs         *blob.Store
	nudger        *nudger.Service
	commands      *commands.Service
	broker        *broker.Broker
	mqttURL       *url.URL   // where the ingester and the relay connect
	mqttPublicURL mqttPublic // what devices are told
	mqttPassword  string
	remoteState   remote
	events        eventsState
}

// New builds the module graph for cfg. It fails only when the table itself
// is broken (see modules.New).
func New(cfg *config.Config, log *slog.Logger) (*App, error) {
	a := &App{cfg: cfg, log: log, ready: httpserver.NewReadiness()}
	m, err := modules.New(a.table())
	if err != nil {
		return nil, err
	}
	a.mgr = m
	return a, nil
}

// Manager exposes the graph (for --list-targets and tests).
func (a *App) Manager() *modules.Manager { return a.mgr }
