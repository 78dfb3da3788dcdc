// Package ingester takes what devices publish over MQTT into the platform:
// live state into the KV store, telemetry, logs and connectivity into the
// telemetry store, every accepted message onto Kafka, and device liveness
// into PostgreSQL. It is an MQTT client (paho.golang's autopaho) in a shared
// subscription, so any number of ingesters split the traffic of one broker
// or broker cluster; it does not care whether that broker is embedded in
// this process or external.
//
// Delivery is at least once and memory is bounded: the ingester subscribes
// at QoS 1, announces a Receive Maximum so the broker never has more than
// that many unacknowledged messages out to it, and acknowledges a message
// only after the batch holding it was written everywhere. A slow store
// therefore slows the broker's deliveries down instead of growing a queue
// here, and a message that was acknowledged has been stored, whatever
// happens to the process afterwards.
package ingester

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sethvargo/go-retry"
	"golang.org/x/sync/errgroup"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/telemetry"
)

// Config configures an Ingester.
type Config struct {
	// Broker is the MQTT broker (mqtt://, mqtts://, tcp://, tls://).
	Broker *url.URL
	// Username and Password are the service credentials the broker trusts.
	Username, Password string
	// ClientID names this ingester's sessions; connection i uses
	// ClientID-i. It must be unique per ingester and stable across its
	// restarts, so that a restarted ingester resumes its sessions and the
	// broker redelivers what it had not acknowledged. Default: host name.
	ClientID string
	// ShareGroup is the shared-subscription group every ingester joins.
	ShareGroup string
	// Connections is how many MQTT connections (each with its own window
	// and batches) this ingester runs. Default 2: since each connection
	// writes one batch while the next fills, more connections only make
	// smaller batches; in bench/ingest 2 took the end-to-end rate to 0.55
	// of the broker's fan-in (median of 10 rounds), 4 to 0.49-0.54.
	Connections int
	// ReceiveMaximum bounds the unacknowledged QoS 1 messages the broker
	// sends on each connection. It must cover a batch being written and
	// the next one filling meanwhile. Default DefaultReceiveMaximum; the
	// embedded broker queues up to 1024 per client.
	ReceiveMaximum uint16
	// BatchSize and FlushPeriod shape batches. While no batch is being
	// written, a batch is written once it holds BatchSize messages (or the
	// connection's whole window) or its first message is FlushPeriod old;
	// while one is being written, the next takes whatever arrives and is
	// written as soon as the first is done. Defaults 500 and 20ms.
	BatchSize   int
	FlushPeriod time.Duration
	// SessionExpiry is how long the broker keeps a disconnected ingester's
	// session and its unacknowledged messages. Default 5 minutes.
	SessionExpiry time.Duration
	// DrainTimeout bounds how long a stopping ingester keeps trying to
	// write what it already received; what it could not write it does not
	// acknowledge, and the broker redelivers it. Keep it below the grace
	// period of the ingester's pod. Default 20s.
	DrainTimeout time.Duration
	// MaxPayload drops larger payloads (an external broker may allow more
	// than the contract does). Default 256 KiB.
	MaxPayload int
	Log        *slog.Logger
	Metrics    prometheus.Registerer
}

// Deps are the stores the ingester writes to.
type Deps struct {
	KV        kv.Store
	Telemetry telemetry.Store
	Bus       *bus.Bus
	Pool      *pgxpool.Pool
	Validator *asyncapi.Validator
}

// Ingester is one ingester process's MQTT side. Create it with New and run
// it with Run.
type Ingester struct {
	cfg     Config
	deps    Deps
	log     *slog.Logger
	metrics *metrics
	owners  *owners

	// subscribed counts connections that are up and subscribed.
	subscribed atomic.Int32
}

// Ready reports whether every connection is up and subscribed; it backs
// /readyz, and tests wait on it before publishing (a shared subscription
// does not keep messages for a group that has no member yet).
func (in *Ingester) Ready(context.Context) error {
	if n := int(in.subscribed.Load()); n < in.cfg.Connections {
		return fmt.Errorf("%d of %d mqtt connections subscribed", n, in.cfg.Connections)
	}
	return nil
}

const (
	defaultShareGroup  = "flock-ingester"
	defaultConnections = 2
	// DefaultReceiveMaximum is the window of each connection. With 64,
	// bench/ingest found the ingester idle while the broker waited for
	// acknowledgements: a batch took the whole window to write.
	DefaultReceiveMaximum = 512
	defaultBatchSize      = 500
	defaultFlushPeriod    = 20 * time.Millisecond
	defaultSessionExpiry  = 5 * time.Minute
	defaultMaxPayload     = 256 << 10

	// A batch that cannot be written is retried after these pauses, longest
	// last, until it succeeds or shutdown's deadline passes; its messages
	// stay unacknowledged meanwhile, so the broker stops sending.
	retryMin = 100 * time.Millisecond
	retryMax = 5 * time.Second
	// subscribeRetryMax is the longest pause between SUBSCRIBE attempts.
	subscribeRetryMax = 30 * time.Second

	defaultDrainTimeout = 20 * time.Second

	// sendAcksInterval: paho sends manual acknowledgements in receive order
	// on this tick.
	sendAcksInterval = 10 * time.Millisecond
)

// New checks cfg and returns an Ingester.
func New(cfg Config, d Deps) (*Ingester, error) {
	if cfg.Broker == nil {
		return nil, errors.New("ingester: no broker URL")
	}
	if d.KV == nil || d.Telemetry == nil || d.Bus == nil || d.Pool == nil || d.Validator == nil {
		return nil, errors.New("ingester: missing a store")
	}
	if cfg.ClientID == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "ingester-" + randomSuffix()
		}
		cfg.ClientID = "flock-ingester-" + host
	}
	if cfg.ShareGroup == "" {
		cfg.ShareGroup = defaultShareGroup
	}
	if cfg.Connections <= 0 {
		cfg.Connections = defaultConnections
	}
	if cfg.ReceiveMaximum == 0 {
		cfg.ReceiveMaximum = DefaultReceiveMaximum
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = defaultBatchSize
	}
	if cfg.FlushPeriod <= 0 {
		cfg.FlushPeriod = defaultFlushPeriod
	}
	if cfg.SessionExpiry <= 0 {
		cfg.SessionExpiry = defaultSessionExpiry
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = defaultDrainTimeout
	}
	if cfg.MaxPayload <= 0 {
		cfg.MaxPayload = defaultMaxPayload
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	return &Ingester{
		cfg:     cfg,
		deps:    d,
		log:     cfg.Log.With("component", "ingester"),
		metrics: m,
		owners:  newOwners(d.Pool),
	}, nil
}

func randomSuffix() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Run consumes until ctx ends, then stops taking messages, writes and
// acknowledges what it holds, and disconnects.
func (in *Ingester) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	for i := range in.cfg.Connections {
		g.Go(func() error { return in.runConnection(ctx, fmt.Sprintf("%s-%d", in.cfg.ClientID, i)) })
	}
	return g.Wait()
}

// received is one PUBLISH and the connection it came in on, which is the
// only one that may acknowledge it.
type received struct {
	pub    *paho.Publish
	client *paho.Client
	at     time.Time
}

// runConnection runs one MQTT connection and its batch worker.
func (in *Ingester) runConnection(ctx context.Context, clientID string) error {
	log := in.log.With("client_id", clientID)
	// The channel holds one window: the broker sends no more QoS 1 messages
	// than that until some are acknowledged. QoS 0 messages beyond it block
	// paho's reader, which pushes back on the broker through TCP, and the
	// broker drops QoS 0 for a slow client as MQTT allows.
	inbox := make(chan received, int(in.cfg.ReceiveMaximum))

	// stopTaking is closed when shutdown starts: messages still arriving are
	// left unacknowledged for the broker to redeliver.
	stopTaking := make(chan struct{})
	var stopOnce sync.Once
	stop := func() { stopOnce.Do(func() { close(stopTaking) }) }

	var up atomic.Bool
	var cancelSub atomic.Pointer[context.CancelFunc] // the subscribing of the current connection
	filters := make([]paho.SubscribeOptions, 0, len(devicetopic.FromDevice))
	for _, k := range devicetopic.FromDevice {
		filters = append(filters, paho.SubscribeOptions{
			Topic: "$share/" + in.cfg.ShareGroup + "/" + devicetopic.Wildcard(k),
			QoS:   1,
		})
	}

	// The connection outlives ctx: it must stay up while the last batch is
	// written and acknowledged.
	connCtx, cancelConn := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelConn()
	recvMax := in.cfg.ReceiveMaximum
	expiry := uint32(in.cfg.SessionExpiry / time.Second)
	cm, err := autopaho.NewConnection(connCtx, autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{in.cfg.Broker},
		KeepAlive:                     30,
		CleanStartOnInitialConnection: false,
		SessionExpiryInterval:         expiry,
		ReconnectBackoff:              autopaho.NewExponentialBackoff(250*time.Millisecond, 10*time.Second, 500*time.Millisecond, 2),
		ConnectTimeout:                10 * time.Second,
		ConnectUsername:               in.cfg.Username,
		ConnectPassword:               []byte(in.cfg.Password),
		ConnectPacketBuilder: func(c *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if c.Properties == nil {
				c.Properties = &paho.ConnectProperties{}
			}
			c.Properties.ReceiveMaximum = &recvMax
			return c, nil
		},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, ack *paho.Connack) {
			log.Info("ingester connected to mqtt broker", "broker", in.cfg.Broker.Redacted(), "session_present", ack.SessionPresent)
			in.metrics.connected.Inc()
			// Subscribing waits for the SUBACK, which paho's reader
			// delivers; OnConnectionUp must not block it.
			// A refused SUBSCRIBE (an external broker's ACL hook down,
			// say) is retried for as long as this connection lasts.
			subCtx, cancel := context.WithCancel(connCtx)
			if old := cancelSub.Swap(&cancel); old != nil {
				(*old)()
			}
			go func() {
				err := retry.Do(subCtx, retry.WithCappedDuration(subscribeRetryMax, retry.NewExponential(retryMin)), func(ctx context.Context) error {
					sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					defer cancel()
					sa, err := cm.Subscribe(sctx, &paho.Subscribe{Subscriptions: filters})
					if err != nil {
						var reasons []byte
						if sa != nil {
							reasons = sa.Reasons
						}
						log.Error("ingester: subscribe; retrying", "error", err, "reason_codes", fmt.Sprintf("% x", reasons))
						return retry.RetryableError(err)
					}
					return nil
				})
				if err == nil && !up.Swap(true) {
					in.subscribed.Add(1)
				}
			}()
		},
		OnConnectionDown: func() bool {
			if c := cancelSub.Load(); c != nil {
				(*c)()
			}
			in.metrics.connected.Dec()
			if up.Swap(false) {
				in.subscribed.Add(-1)
			}
			log.Warn("ingester lost its mqtt connection; reconnecting")
			return true
		},
		OnConnectError: func(err error) {
			// autopaho retries for ever; this is where the real reason shows.
			log.Error("ingester cannot connect to mqtt broker", "broker", in.cfg.Broker.Redacted(), "error", err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID:                   clientID,
			EnableManualAcknowledgment: true,
			SendAcksInterval:           sendAcksInterval,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){
				func(pr paho.PublishReceived) (bool, error) {
					select {
					case inbox <- received{pub: pr.Packet, client: pr.Client, at: time.Now()}:
					case <-stopTaking:
					}
					return true, nil
				},
			},
			OnClientError: func(err error) { log.Warn("ingester mqtt client error", "error", err) },
			OnServerDisconnect: func(d *paho.Disconnect) {
				log.Warn("mqtt broker disconnected the ingester", "reason_code", d.ReasonCode)
			},
		},
	})
	if err != nil {
		return fmt.Errorf("ingester %s: connect to %s: %w", clientID, in.cfg.Broker.Redacted(), err)
	}

	w := in.newWorker(log)
	workerDone := make(chan error, 1)
	go func() { workerDone <- w.run(ctx, inbox) }()

	<-ctx.Done()
	stop()
	err = <-workerDone
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Give paho a moment to send the acknowledgements queued by the last
	// batch before the DISCONNECT.
	time.Sleep(2 * sendAcksInterval)
	if derr := cm.Disconnect(dctx); derr != nil && !errors.Is(derr, autopaho.ConnectionDownError) {
		log.Warn("ingester: disconnect", "error", derr)
	}
	return err
}
