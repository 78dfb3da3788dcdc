// Package bus is the platform's Kafka message bus: it publishes device data
// keyed by device uuid and runs consumer-group members with at-least-once
// delivery. With no brokers configured it runs an in-process kfake cluster,
// which speaks the real Kafka protocol to the same franz-go client.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Topics used by the platform.
const (
	TopicDeviceState        = "flock.device.state.v1"
	TopicDeviceConnectivity = "flock.device.connectivity.v1"
	TopicDeviceEvents       = "flock.device.events.v1"
	TopicDeviceCommands     = "flock.device.commands.v1"
	TopicDeviceTelemetry    = "flock.device.telemetry.v1"
	TopicDeviceLogs         = "flock.device.logs.v1"
	TopicRolloutEvents      = "flock.rollout.events.v1"
	TopicCommandEvents      = "flock.device.command-events.v1"
	TopicDeltaRequests      = "flock.delta.requests.v1"
	TopicBuildRequests      = "flock.build.requests.v1"
)

// AllTopics are the topics Open makes sure exist.
var AllTopics = []string{
	TopicDeviceState,
	TopicDeviceConnectivity,
	TopicDeviceEvents,
	TopicDeviceCommands,
	TopicDeviceTelemetry,
	TopicDeviceLogs,
	TopicRolloutEvents,
	TopicCommandEvents,
	TopicDeltaRequests,
	TopicBuildRequests,
}

// ErrClosed is returned by Consume when the Bus was closed under it.
var ErrClosed = errors.New("message bus closed")

const (
	defaultPartitions = 6

	// Bounds for work that runs after the caller's context is gone, so
	// shutdown cannot hang on a broker that stopped answering.
	commitTimeout = 10 * time.Second
	leaveTimeout  = 10 * time.Second

	// Without a deadline an idempotent producer retries forever; a
	// publisher (the ingester) should rather fail and let the device resend.
	deliveryTimeout = 2 * time.Minute

	// A partition assigned while a fetch is in flight waits for that fetch
	// to return; franz-go's 5s default made every new member sit idle that
	// long. This is the Java client's default.
	fetchMaxWait = 500 * time.Millisecond

	clientID = "flock-api"
)

// Config configures Open.
type Config struct {
	// Brokers are the seed brokers (FLOCK_KAFKA_BROKERS). Empty starts an
	// embedded kfake cluster in this process.
	Brokers []string
	// Partitions is used for topics the bus creates (embedded: always;
	// external: only topics that are missing). Default 6.
	Partitions int32
	// Log receives franz-go and kfake warnings and errors. Default slog.Default().
	Log *slog.Logger
}

// Record is one Kafka record. Key is the device (or rollout) id so a key's
// records stay in order on one partition.
type Record struct {
	Topic   string
	Key     []byte
	Value   []byte
	Headers map[string]string
}

// Bus publishes to and consumes from Kafka.
type Bus struct {
	log      *slog.Logger
	brokers  []string
	embedded *kfake.Cluster
	client   *kgo.Client // producer and admin; consumers get their own client

	// closing is cancelled by Close so running consumers stop and commit
	// before the clients and the embedded cluster go away.
	closing   context.Context
	cancel    context.CancelFunc
	mu        sync.Mutex
	closed    bool
	consumers sync.WaitGroup
	closeOnce sync.Once
}

// Open connects (or starts the embedded cluster), makes sure AllTopics exist,
// and checks the cluster answers. An unreachable cluster fails with an error
// naming FLOCK_KAFKA_BROKERS.
func Open(ctx context.Context, cfg Config) (*Bus, error) {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	partitions := cfg.Partitions
	if partitions <= 0 {
		partitions = defaultPartitions
	}
	// A blank FLOCK_KAFKA_BROKERS split on commas gives [""]: that means
	// "unset", not a broker named "".
	brokers := slices.DeleteFunc(slices.Clone(cfg.Brokers), func(s string) bool { return strings.TrimSpace(s) == "" })
	for i := range brokers {
		brokers[i] = strings.TrimSpace(brokers[i])
	}

	b := &Bus{log: log}
	b.closing, b.cancel = context.WithCancel(context.Background())
	if len(brokers) == 0 {
		cluster, err := startEmbedded(partitions, log)
		if err != nil {
			b.cancel()
			return nil, fmt.Errorf("start embedded kafka (FLOCK_KAFKA_BROKERS unset): %w", err)
		}
		b.embedded = cluster
		brokers = cluster.ListenAddrs()
	}
	b.brokers = brokers

	client, err := kgo.NewClient(b.baseOpts(
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordDeliveryTimeout(deliveryTimeout),
	)...)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("kafka client for %s: %w", b.where(), err)
	}
	b.client = client

	if err := b.client.Ping(ctx); err != nil {
		b.Close()
		return nil, fmt.Errorf("kafka at %s does not answer: %w", b.where(), err)
	}
	if err := b.ensureTopics(ctx, partitions); err != nil {
		b.Close()
		return nil, err
	}
	if b.embedded != nil {
		log.Info("message bus: embedded kfake cluster", "brokers", brokers, "partitions", partitions)
	} else {
		log.Info("message bus: kafka", "brokers", brokers)
	}
	return b, nil
}

// where names the cluster in errors so an operator knows which setting to fix.
func (b *Bus) where() string {
	if b.embedded != nil {
		return "embedded kfake " + strings.Join(b.brokers, ",")
	}
	return strings.Join(b.brokers, ",") + " (FLOCK_KAFKA_BROKERS)"
}

func (b *Bus) baseOpts(extra ...kgo.Opt) []kgo.Opt {
	opts := []kgo.Opt{
		kgo.SeedBrokers(b.brokers...),
		kgo.ClientID(clientID),
		kgo.WithLogger(kgoLogger{b.log}),
	}
	return append(opts, extra...)
}

// ensureTopics creates only the topics that are missing, so a deployment
// whose topics are provisioned elsewhere needs no create permission.
func (b *Bus) ensureTopics(ctx context.Context, partitions int32) error {
	adm := kadm.NewClient(b.client)
	details, err := adm.ListTopics(ctx, AllTopics...)
	if err != nil {
		return fmt.Errorf("list kafka topics at %s: %w", b.where(), err)
	}
	var missing []string
	for _, t := range AllTopics {
		if !details.Has(t) {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	// -1 lets the broker pick its default replication factor.
	resps, err := adm.CreateTopics(ctx, partitions, -1, nil, missing...)
	if err != nil {
		return fmt.Errorf("create kafka topics at %s: %w", b.where(), err)
	}
	for _, r := range resps.Sorted() {
		// Another replica starting at the same time may have won the race.
		if r.Err != nil && !errors.Is(r.Err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("create kafka topic %s at %s: %w (%s)", r.Topic, b.where(), r.Err, r.ErrMessage)
		}
		if r.Err == nil {
			b.log.Info("created kafka topic", "topic", r.Topic, "partitions", r.NumPartitions)
		}
	}
	return nil
}

// Embedded reports whether the bus runs an in-process kfake cluster.
func (b *Bus) Embedded() bool { return b.embedded != nil }

// Brokers returns the seed brokers: the kfake listen addresses when embedded.
func (b *Bus) Brokers() []string { return slices.Clone(b.brokers) }

// Publish produces recs synchronously with acks=all and idempotent writes;
// records keep their order per key. It returns only after the brokers
// acknowledged every record, so callers may ack upstream (MQTT) afterwards.
func (b *Bus) Publish(ctx context.Context, recs ...Record) error {
	if len(recs) == 0 {
		return nil
	}
	// franz-go notices cancellation only for records it has not sent yet,
	// which could let part of a batch through; a caller that is already
	// cancelled must publish nothing.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("publish %d records: %w", len(recs), err)
	}
	krecs := make([]*kgo.Record, len(recs))
	for i, r := range recs {
		krecs[i] = toKgo(r)
	}
	if err := b.client.ProduceSync(ctx, krecs...).FirstErr(); err != nil {
		return fmt.Errorf("publish %d records to %s: %w", len(recs), recs[0].Topic, err)
	}
	return nil
}

// Consume runs a consumer-group member on topics until ctx is done. handler
// gets one poll's worth of records; their offsets are committed only after it
// returns nil, so delivery is at least once and handlers must be idempotent.
// A handler error stops Consume and is returned, leaving that batch
// uncommitted for redelivery. Consume returns nil when ctx is cancelled, after
// committing what was handled; a handler that fails only because ctx was
// cancelled counts as cancellation. It returns ErrClosed if the Bus closes.
func (b *Bus) Consume(ctx context.Context, group string, topics []string, handler func(ctx context.Context, recs []Record) error, opts ...ConsumeOption) error {
	var co consumeOpts
	for _, o := range opts {
		o(&co)
	}
	if group == "" || len(topics) == 0 || handler == nil {
		return fmt.Errorf("consume: group, topics and handler are required (group %q, topics %v)", group, topics)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	b.consumers.Add(1)
	b.mu.Unlock()
	defer b.consumers.Done()

	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(b.closing, cancel)
	defer stop()

	cl, err := kgo.NewClient(b.baseOpts(append([]kgo.Opt{
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topics...),
		kgo.DisableAutoCommit(),
		// Rebalances wait until the polled batch is handled and committed,
		// so a partition never moves with handled-but-uncommitted records
		// and a healthy group does not redeliver.
		kgo.BlockRebalanceOnPoll(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(fetchMaxWait),
	}, co.kgo()...)...)...)
	if err != nil {
		return fmt.Errorf("consume group %s: kafka client for %s: %w", group, b.where(), err)
	}
	defer b.closeConsumer(cl, group)

	log := b.log.With("group", group)
	for {
		fetches := cl.PollFetches(ctx)
		// Records polled after cancellation are dropped unhandled: they are
		// uncommitted, so the group gets them again.
		if ctx.Err() != nil || fetches.IsClientClosed() {
			return b.stopReason(parent)
		}
		fetches.EachError(func(topic string, partition int32, err error) {
			// franz-go keeps retrying behind these; they are worth a line
			// in the log, not a restart.
			log.Warn("kafka fetch error", "topic", topic, "partition", partition, "err", err)
		})
		krecs := fetches.Records()
		if len(krecs) == 0 {
			cl.AllowRebalance()
			continue
		}
		recs := make([]Record, len(krecs))
		for i, kr := range krecs {
			recs[i] = fromKgo(kr)
		}
		if err := handler(ctx, recs); err != nil {
			cl.AllowRebalance()
			if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
				return b.stopReason(parent)
			}
			return fmt.Errorf("consume group %s: handler: %w", group, err)
		}
		// The batch is handled even if ctx was cancelled meanwhile; its
		// commit must not be cancelled with it.
		cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
		err := cl.CommitRecords(cctx, krecs...)
		ccancel()
		cl.AllowRebalance()
		if err != nil {
			return fmt.Errorf("consume group %s: commit offsets: %w", group, err)
		}
	}
}

func (b *Bus) stopReason(parent context.Context) error {
	if parent.Err() != nil {
		return nil
	}
	return ErrClosed
}

// closeConsumer leaves the group with a bound, so a dead broker cannot hold
// up shutdown; Close would otherwise wait for the leave indefinitely.
func (b *Bus) closeConsumer(cl *kgo.Client, group string) {
	cl.AllowRebalance()
	ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
	defer cancel()
	if err := cl.LeaveGroupContext(ctx); err != nil {
		b.log.Warn("kafka leave group", "group", group, "err", err)
	}
	cl.Close()
}

// Ping checks that a broker answers.
func (b *Bus) Ping(ctx context.Context) error {
	if err := b.client.Ping(ctx); err != nil {
		return fmt.Errorf("ping kafka at %s: %w", b.where(), err)
	}
	return nil
}

// Close stops running consumers (they commit what they handled), then closes
// the producer and, when embedded, the kfake cluster. It is safe to call more
// than once.
func (b *Bus) Close() {
	b.closeOnce.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		b.cancel()
		b.consumers.Wait()
		if b.client != nil {
			b.client.Close()
		}
		if b.embedded != nil {
			b.embedded.Close()
		}
	})
}

func toKgo(r Record) *kgo.Record {
	kr := &kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Value}
	if len(r.Headers) > 0 {
		kr.Headers = make([]kgo.RecordHeader, 0, len(r.Headers))
		for k, v := range r.Headers {
			kr.Headers = append(kr.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
	}
	return kr
}

func fromKgo(kr *kgo.Record) Record {
	r := Record{Topic: kr.Topic, Key: kr.Key, Value: kr.Value}
	if len(kr.Headers) > 0 {
		r.Headers = make(map[string]string, len(kr.Headers))
		for _, h := range kr.Headers {
			r.Headers[h.Key] = string(h.Value)
		}
	}
	return r
}

// kgoLogger passes franz-go's warnings and errors to slog; its info and
// debug lines describe every connection and rebalance and would drown ours.
type kgoLogger struct{ log *slog.Logger }

func (kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (l kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lvl := slog.LevelDebug
	switch level {
	case kgo.LogLevelError:
		lvl = slog.LevelError
	case kgo.LogLevelWarn:
		lvl = slog.LevelWarn
	case kgo.LogLevelInfo:
		lvl = slog.LevelInfo
	}
	l.log.Log(context.Background(), lvl, "kafka client: "+msg, keyvals...)
}
