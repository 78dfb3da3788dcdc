package app

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/events"
	"github.com/flock-io/flock-api/internal/ingester"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/internal/mqtt/broker"
	"github.com/flock-io/flock-api/internal/telemetry"
)

// embeddedWarning is logged when a process that does not run every target
// uses an in-process engine: other processes cannot see into it.
func (a *App) embeddedWarning(concern, setting string) {
	if a.cfg.Target != All {
		a.log.Warn("embedded engine serves this process only: targets run as separate processes need "+setting,
			"concern", concern)
	}
}

func (a *App) initKV(ctx context.Context) (*modules.Service, error) {
	if a.cfg.RedisURL == "" {
		a.kv = kv.NewMemory()
		a.log.Info("store engine", "concern", "live device state", "engine", "in-process", "mode", "embedded")
		a.embeddedWarning("live device state", "FLOCK_REDIS_URL")
	} else {
		r, err := kv.NewRedis(ctx, a.cfg.RedisURL)
		if err != nil {
			return nil, fmt.Errorf("FLOCK_REDIS_URL: %w", err)
		}
		a.kv = r
		a.log.Info("store engine", "concern", "live device state", "engine", "redis", "mode", "external")
	}
	a.ready.Add("kv", a.kv.Ping)
	store := a.kv
	return &modules.Service{Close: func() { _ = store.Close() }}, nil
}

func (a *App) initKafka(ctx context.Context) (*modules.Service, error) {
	seeds := a.cfg.KafkaSeeds()
	b, err := bus.Open(ctx, bus.Config{Brokers: seeds, Log: a.log})
	if err != nil {
		return nil, fmt.Errorf("FLOCK_KAFKA_BROKERS: %w", err)
	}
	if b.Embedded() {
		a.log.Info("store engine", "concern", "message bus", "engine", "kfake", "mode", "embedded", "brokers", strings.Join(b.Brokers(), ","))
		a.embeddedWarning("message bus", "FLOCK_KAFKA_BROKERS")
	} else {
		a.log.Info("store engine", "concern", "message bus", "engine", "kafka", "mode", "external", "brokers", strings.Join(seeds, ","))
	}
	a.ready.Add("kafka", b.Ping)
	a.bus = b
	return &modules.Service{Close: b.Close}, nil
}

func (a *App) initTelemetry(ctx context.Context) (*modules.Service, error) {
	if a.cfg.ClickHouseURL == "" {
		a.telemetry = telemetry.NewPostgres(a.pool)
		// The tables live in the relational database, which is external;
		// only ClickHouse is missing.
		a.log.Info("store engine", "concern", "telemetry, logs, connectivity", "engine", "postgresql", "mode", "external",
			"note", "FLOCK_CLICKHOUSE_URL is unset: tables in the relational database")
		return nil, nil
	}
	ch, err := telemetry.NewClickHouse(ctx, a.cfg.ClickHouseURL)
	if err != nil {
		return nil, fmt.Errorf("FLOCK_CLICKHOUSE_URL: %w", err)
	}
	a.telemetry = ch
	a.ready.Add("clickhouse", ch.Ping)
	a.log.Info("store engine", "concern", "telemetry, logs, connectivity", "engine", "clickhouse", "mode", "external")
	return &modules.Service{Close: func() { _ = ch.Close() }}, nil
}

// initDeviceTokens loads the device-token signing keys. The API issues
// tokens with them and the broker verifies them; both read the keys from
// PostgreSQL, so no process asks another to check a token.
func (a *App) initDeviceTokens(ctx context.Context) (*modules.Service, error) {
	tokens, err := devicetoken.New(ctx, a.pool, devicetoken.Config{
		Issuer: DeviceIssuer(a.cfg.PublicURL), TokenEndpoint: TokenEndpoint(a.cfg.PublicURL), Log: a.log})
	if err != nil {
		return nil, fmt.Errorf("device token keys: %w", err)
	}
	a.tokens = tokens
	// Rotation and forgetting spent assertion ids run under an advisory
	// lock, so every process may run them.
	return &modules.Service{Run: tokens.Run}, nil
}

// initMQTTBroker starts the embedded broker unless FLOCK_MQTT_URL names an
// external one. Either way it settles the URL and credentials the ingester
// connects with.
func (a *App) initMQTTBroker(context.Context) (*modules.Service, error) {
	a.mqttPassword = a.cfg.MQTTPassword
	if a.cfg.MQTTURL != "" {
		u, err := url.Parse(a.cfg.MQTTURL)
		if err != nil {
			return nil, fmt.Errorf("FLOCK_MQTT_URL: %w", err)
		}
		a.mqttURL = u
		a.mqttPublicURL.Store(a.cfg.MQTTPublicURL)
		a.log.Info("store engine", "concern", "device mqtt", "engine", "external broker", "mode", "external", "url", u.Redacted())
		return nil, nil
	}
	if a.mqttPassword == "" {
		// Only this process talks to its embedded broker as the service.
		var b [24]byte
		_, _ = rand.Read(b[:])
		a.mqttPassword = base64.RawURLEncoding.EncodeToString(b[:])
	}
	br, err := broker.New(broker.Config{
		Listen:            a.cfg.MQTTListen,
		ServiceUsername:   a.cfg.MQTTUsername,
		ServicePassword:   a.mqttPassword,
		MessagesPerSecond: a.cfg.MQTTDeviceRate,
		Devices:           a.pool,
		Burst:             int(2 * a.cfg.MQTTDeviceRate),
		Log:               a.log,
		Metrics:           a.metrics.Registry,
	}, a.tokens)
	if err != nil {
		return nil, fmt.Errorf("FLOCK_MQTT_LISTEN: %w", err)
	}
	a.broker = br
	a.ready.Add("mqtt-revocations", br.Ready)
	a.mqttURL = &url.URL{Scheme: "mqtt", Host: loopback(br.Addr())}
	public := a.cfg.MQTTPublicURL
	if public == "" {
		public = publicMQTTURL(a.cfg.PublicURL, br.Addr())
	}
	a.mqttPublicURL.Store(public)
	a.log.Info("store engine", "concern", "device mqtt", "engine", "mochi-mqtt", "mode", "embedded",
		"listen", br.Addr(), "devices_connect_to", public)
	return &modules.Service{Run: br.Run}, nil
}

// loopback turns a listener address into one this process can dial.
func loopback(addr string) string {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return net.JoinHostPort("127.0.0.1", port)
}

// publicMQTTURL is the embedded broker as devices reach it: the public URL's
// host on the broker's port.
func publicMQTTURL(publicURL, listen string) string {
	_, port, err := net.SplitHostPort(listen)
	if err != nil {
		return ""
	}
	u, err := url.Parse(publicURL)
	if err != nil || u.Hostname() == "" {
		return ""
	}
	return "mqtt://" + net.JoinHostPort(u.Hostname(), port)
}

func (a *App) initIngester(context.Context) (*modules.Service, error) {
	v, err := events.NewValidator()
	if err != nil {
		return nil, err
	}
	ing, err := ingester.New(ingester.Config{
		Broker:      a.mqttURL,
		Username:    a.cfg.MQTTUsername,
		Password:    a.mqttPassword,
		BatchSize:   a.cfg.IngestBatchSize,
		FlushPeriod: a.cfg.IngestFlushPeriod,
		Log:         a.log,
		Metrics:     a.metrics.Registry,
	}, ingester.Deps{KV: a.kv, Telemetry: a.telemetry, Bus: a.bus, Pool: a.pool, Validator: v})
	if err != nil {
		return nil, err
	}
	a.ready.Add("ingester", ing.Ready)
	return &modules.Service{Run: func(ctx context.Context) error {
		g, ctx := errgroup.WithContext(ctx)
		g.Go(func() error { return ing.Run(ctx) })
		g.Go(func() error { return ing.RunRelay(ctx) })
		return g.Wait()
	}}, nil
}

// mqttPublic is the broker URL devices are told at registration. The API
// may be wired before the embedded broker has bound its port, so it reads
// the URL when a device registers.
type mqttPublic struct{ v atomic.Pointer[string] }

func (m *mqttPublic) Store(s string) { m.v.Store(&s) }

// Load returns the URL, or "" when none is known.
func (m *mqttPublic) Load() string {
	if p := m.v.Load(); p != nil {
		return *p
	}
	return ""
}
