// Package relay carries what Flock sends devices, from Kafka to MQTT: each
// record of flock.device.commands.v1 (a target nudge or a command) becomes a
// QoS 1 message on the device's target or commands topic. It runs in the
// ingester target, with its own MQTT connection as the service client.
package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sethvargo/go-retry"
	"golang.org/x/sync/errgroup"

	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devicetopic"
)

// Config says where the relay publishes and as whom.
type Config struct {
	// Broker is the MQTT broker devices are connected to.
	Broker *url.URL
	// Username and Password are the service client's credentials.
	Username, Password string
	// ClientID names the relay's MQTT session; unique per process.
	ClientID string
	Log      *slog.Logger
	Metrics  prometheus.Registerer
}

// CommandsGroup is the Kafka consumer group of the relay: every ingester
// joins it, so each record of flock.device.commands.v1 is delivered by one
// of them. With an external broker cluster any ingester reaches any device;
// the embedded broker serves one process, which is why separate processes
// need an external broker.
const CommandsGroup = "flock-ingester-commands"

// Relay is one process's relay. Create it with New and run it with Run.
type Relay struct {
	cfg     Config
	bus     *bus.Bus
	log     *slog.Logger
	relayed prometheus.Counter
	dropped prometheus.Counter
}

// A publish that fails is retried after these pauses, longest last, until
// it succeeds or the relay stops; the batch's offsets wait meanwhile.
const (
	retryMin = 100 * time.Millisecond
	retryMax = 5 * time.Second
)

// New checks cfg and registers the relay's metrics.
func New(cfg Config, b *bus.Bus) (*Relay, error) {
	switch {
	case cfg.Broker == nil:
		return nil, errors.New("relay: no broker")
	case cfg.ClientID == "":
		return nil, errors.New("relay: no client id")
	case b == nil:
		return nil, errors.New("relay: no bus")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	r := &Relay{cfg: cfg, bus: b, log: cfg.Log.With("component", "relay"),
		relayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flock_ingest_relayed_total",
			Help: "Target nudges and commands the relay published to devices.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "flock_ingest_relay_dropped_total",
			Help: "Records of flock.device.commands.v1 the relay could not turn into a message.",
		}),
	}
	if cfg.Metrics != nil {
		for _, c := range []prometheus.Collector{r.relayed, r.dropped} {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("relay: register metrics: %w", err)
			}
		}
	}
	return r, nil
}

// relayConcurrency bounds the QoS 1 publishes of one Kafka batch in flight:
// a new release nudges a whole fleet at once.
const relayConcurrency = 64

// Run carries flock.device.commands.v1 to devices: a target nudge to
// flock/v1/devices/<uuid>/target and a command to .../commands, at QoS 1.
// A device that is not connected misses the message, which is fine: it
// GETs its target state when it connects. Offsets are committed only after
// the broker accepted every message of a batch.
func (r *Relay) Run(ctx context.Context) error {
	log := r.log.With("client_id", r.cfg.ClientID)
	connCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	cm, err := autopaho.NewConnection(connCtx, autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{r.cfg.Broker},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ReconnectBackoff:              autopaho.NewExponentialBackoff(250*time.Millisecond, 10*time.Second, 500*time.Millisecond, 2),
		ConnectUsername:               r.cfg.Username,
		ConnectPassword:               []byte(r.cfg.Password),
		OnConnectError: func(err error) {
			log.Error("relay cannot connect to mqtt broker", "broker", r.cfg.Broker.Redacted(), "error", err)
		},
		ClientConfig: paho.ClientConfig{ClientID: r.cfg.ClientID},
	})
	if err != nil {
		return fmt.Errorf("relay: connect to %s: %w", r.cfg.Broker.Redacted(), err)
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer dcancel()
		_ = cm.Disconnect(dctx)
	}()
	err = r.bus.Consume(ctx, CommandsGroup, []string{bus.TopicDeviceCommands}, func(ctx context.Context, recs []bus.Record) error {
		return r.relay(ctx, log, cm, recs)
	})
	if errors.Is(err, bus.ErrClosed) && ctx.Err() != nil {
		return nil
	}
	return err
}

func (r *Relay) relay(ctx context.Context, log *slog.Logger, cm *autopaho.ConnectionManager, recs []bus.Record) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(relayConcurrency)
	for _, rec := range recs {
		topic, payload, err := commandMessage(rec.Value)
		if err != nil {
			// A record no device could use; retrying cannot fix it.
			r.dropped.Inc()
			log.Error("relay dropped a command record", "key", string(rec.Key), "error", err)
			continue
		}
		g.Go(func() error {
			return retry.Do(ctx, retry.WithCappedDuration(retryMax, retry.NewExponential(retryMin)), func(ctx context.Context) error {
				if err := cm.AwaitConnection(ctx); err != nil {
					return err
				}
				if _, err := cm.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload}); err != nil {
					if ctx.Err() != nil {
						// Stopping: the batch's offsets stay uncommitted, and
						// whoever takes the partition publishes it again.
						return err
					}
					log.Warn("relay: publish; retrying", "topic", topic, "error", err)
					return retry.RetryableError(err)
				}
				r.relayed.Inc()
				return nil
			})
		})
	}
	return g.Wait()
}

// commandMessage turns a DeviceCommandRecord into the MQTT message for the
// device.
func commandMessage(value []byte) (string, []byte, error) {
	var rec events.DeviceCommandRecord
	if err := json.Unmarshal(value, &rec); err != nil {
		return "", nil, fmt.Errorf("decode: %w", err)
	}
	device, err := uuid.Parse(rec.DeviceId)
	if err != nil || device.String() != rec.DeviceId {
		return "", nil, fmt.Errorf("device_id %q is not a uuid", rec.DeviceId)
	}
	var kind any
	if rec.Kind != nil {
		kind = rec.Kind.Value()
	}
	switch {
	case kind == "target" && rec.Target != nil:
		b, err := json.Marshal(rec.Target)
		return devicetopic.Topic(device, devicetopic.Target), b, err
	case kind == "command" && rec.Command != nil:
		b, err := json.Marshal(rec.Command)
		return devicetopic.Topic(device, devicetopic.Commands), b, err
	}
	return "", nil, fmt.Errorf("kind %v without its payload", kind)
}
