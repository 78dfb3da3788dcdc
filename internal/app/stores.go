package app

// The stores every target shares: configuration, metrics, PostgreSQL, the
// audit recorder, the HTTP listener, the KV store, Kafka, the telemetry
// store and the device-token keys. Each logs one line saying which engine
// it uses.

import (
	"context"
	"fmt"
	"strings"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/buildinfo"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/http/httpserver"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/metrics"
	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/telemetry"
)

func (a *App) initConfig(context.Context) (*modules.Service, error) {
	// An API without the broker in its process still tells devices where
	// the broker is, when configured.
	if a.cfg.MQTTPublicURL != "" {
		a.mqttPublicURL.Store(a.cfg.MQTTPublicURL)
	}
	a.log.Info("starting flock-api", "version", buildinfo.Get().Version, "commit", buildinfo.Get().Commit,
		"targets", strings.Join(a.targets, ","), "dev", a.cfg.Dev)
	return nil, nil
}

func (a *App) initMetrics(context.Context) (*modules.Service, error) {
	a.metrics = metrics.New()
	return nil, nil
}

func (a *App) initPostgres(ctx context.Context) (*modules.Service, error) {
	pool, err := postgres.Open(ctx, a.cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("FLOCK_DATABASE_URL: %w", err)
	}
	a.log.Info("store engine", "concern", "relational", "engine", "postgresql", "mode", "external")
	m, err := postgres.NewMigrator(pool, a.log)
	if err != nil {
		pool.Close()
		return nil, err
	}
	defer m.Close()
	if a.cfg.Dev {
		n, err := m.Up(ctx)
		if err != nil {
			pool.Close()
			return nil, err
		}
		a.log.Info("dev mode: migrations applied", "applied", n)
	} else {
		pending, err := m.Pending(ctx)
		if err != nil {
			pool.Close()
			return nil, err
		}
		if pending {
			pool.Close()
			return nil, postgres.ErrSchemaBehind
		}
	}
	q := db.New(pool)
	a.ready.Add(Postgres, func(ctx context.Context) error {
		_, err := q.Ping(ctx)
		return err
	})
	a.pool = pool
	return &modules.Service{Close: pool.Close}, nil
}

func (a *App) initHTTPServer(context.Context) (*modules.Service, error) {
	srv, err := httpserver.New(httpserver.Config{
		Addr:          a.cfg.HTTPAddr,
		BodyLimit:     int64(a.cfg.HTTPBodyLimit),
		ShutdownGrace: a.cfg.ShutdownGrace,
	}, a.metrics, a.ready, a.log)
	if err != nil {
		return nil, err
	}
	a.server = srv
	return &modules.Service{Run: srv.Run}, nil
}

func (a *App) initAudit(context.Context) (*modules.Service, error) {
	if a.cfg.LokiURL == "" {
		a.audit = audit.NewRecorder(nil)
		a.log.Info("store engine", "concern", "audit", "engine", "postgresql", "mode", "external")
		return nil, nil
	}
	loki := audit.NewLoki(a.cfg.LokiURL, a.log, a.metrics.Registry)
	a.audit = audit.NewRecorder(loki)
	a.log.Info("store engine", "concern", "audit", "engine", "postgresql+loki", "mode", "external")
	return &modules.Service{Run: loki.Run}, nil
}

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
		engine := "redis"
		if r.Cluster() {
			engine = "redis-cluster"
		}
		a.log.Info("store engine", "concern", "live device state", "engine", engine, "mode", "external", "addr", r.Addr())
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
