package ingester

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
	"github.com/sethvargo/go-retry"
	"golang.org/x/sync/errgroup"

	ev "github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/bus"
)

// CommandsGroup is the Kafka consumer group of the relay: every ingester
// joins it, so each record of flock.device.commands.v1 is delivered by one
// of them. With an external broker cluster any ingester reaches any device;
// the embedded broker serves one process, which is why separate processes
// need an external broker.
const CommandsGroup = "flock-ingester-commands"

// relayConcurrency bounds the QoS 1 publishes of one Kafka batch in flight:
// a new release nudges a whole fleet at once.
const relayConcurrency = 64

// RunRelay carries flock.device.commands.v1 to devices: a target nudge to
// flock/v1/devices/<uuid>/target and a command to .../commands, at QoS 1.
// A device that is not connected misses the message, which is fine: it
// GETs its target state when it connects. Offsets are committed only after
// the broker accepted every message of a batch.
func (in *Ingester) RunRelay(ctx context.Context) error {
	log := in.log.With("client_id", in.cfg.ClientID+"-relay")
	connCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	cm, err := autopaho.NewConnection(connCtx, autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{in.cfg.Broker},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ReconnectBackoff:              autopaho.NewExponentialBackoff(250*time.Millisecond, 10*time.Second, 500*time.Millisecond, 2),
		ConnectUsername:               in.cfg.Username,
		ConnectPassword:               []byte(in.cfg.Password),
		OnConnectError: func(err error) {
			log.Error("relay cannot connect to mqtt broker", "broker", in.cfg.Broker.Redacted(), "error", err)
		},
		ClientConfig: paho.ClientConfig{ClientID: in.cfg.ClientID + "-relay"},
	})
	if err != nil {
		return fmt.Errorf("relay: connect to %s: %w", in.cfg.Broker.Redacted(), err)
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer dcancel()
		_ = cm.Disconnect(dctx)
	}()
	err = in.deps.Bus.Consume(ctx, CommandsGroup, []string{bus.TopicDeviceCommands}, func(ctx context.Context, recs []bus.Record) error {
		return in.relay(ctx, log, cm, recs)
	})
	if errors.Is(err, bus.ErrClosed) && ctx.Err() != nil {
		return nil
	}
	return err
}

func (in *Ingester) relay(ctx context.Context, log *slog.Logger, cm *autopaho.ConnectionManager, recs []bus.Record) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(relayConcurrency)
	for _, r := range recs {
		topic, payload, err := commandMessage(r.Value)
		if err != nil {
			// A record no device could use; retrying cannot fix it.
			in.metrics.relayDropped.Inc()
			log.Error("relay dropped a command record", "key", string(r.Key), "error", err)
			continue
		}
		g.Go(func() error {
			return retry.Do(ctx, writeBackoff(), func(ctx context.Context) error {
				if err := cm.AwaitConnection(ctx); err != nil {
					return err
				}
				if _, err := cm.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload}); err != nil {
					log.Warn("relay: publish; retrying", "topic", topic, "error", err)
					return retry.RetryableError(err)
				}
				in.metrics.relayed.Inc()
				return nil
			})
		})
	}
	return g.Wait()
}

// commandMessage turns a DeviceCommandRecord into the MQTT message for the
// device.
func commandMessage(value []byte) (string, []byte, error) {
	var rec ev.DeviceCommandRecord
	if err := json.Unmarshal(value, &rec); err != nil {
		return "", nil, fmt.Errorf("decode: %w", err)
	}
	device, err := uuid.Parse(rec.DeviceId)
	if err != nil || device.String() != rec.DeviceId {
		return "", nil, fmt.Errorf("device_id %q is not a uuid", rec.DeviceId)
	}
	base := topicPrefix + device.String() + "/"
	var kind any
	if rec.Kind != nil {
		kind = rec.Kind.Value()
	}
	switch {
	case kind == "target" && rec.Target != nil:
		b, err := json.Marshal(rec.Target)
		return base + "target", b, err
	case kind == "command" && rec.Command != nil:
		b, err := json.Marshal(rec.Command)
		return base + "commands", b, err
	}
	return "", nil, fmt.Errorf("kind %v without its payload", kind)
}
