// Package kafkasink forwards CloudEvents to a customer's own Kafka cluster.
//
// Events are written in the CloudEvents 1.0 Kafka protocol binding, binary
// content mode: the record value is the event's data (JSON) and the context
// attributes travel as ce_* headers. Binary mode keeps the value a plain JSON
// document, so consumers that know nothing of CloudEvents can still read it.
//
// The record key is the event's partition key (a device or rollout id):
// with the default Kafka-compatible (murmur2) key partitioner, one key's
// events land in one partition and keep their order.
//
// A Sink is one producer client per endpoint; Send is synchronous so the
// caller (the delivery loop) knows when an event is durably acknowledged
// and, from Retryable, whether a failure is worth retrying.
package kafkasink

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// defaultDeliveryTimeout bounds how long Send retries a record internally.
// kgo otherwise retries forever, so a dead or unreachable cluster would
// block the endpoint's delivery loop instead of failing and backing off.
const defaultDeliveryTimeout = 15 * time.Second

// ErrInvalidEvent reports an event Send refuses before producing it.
var ErrInvalidEvent = errors.New("kafkasink: invalid event")

// Event is one CloudEvent to forward.
type Event struct {
	ID      string // ce_id, required
	Source  string // ce_source (URI-reference), required
	Type    string // ce_type, required
	Subject string // ce_subject, optional
	Time    time.Time
	Key     []byte // record key: the partition key (device id, rollout id)
	Data    []byte // JSON document; the record value
}

// Sink produces to one topic of one cluster. It is safe for concurrent use.
type Sink struct {
	client          *kgo.Client
	topic           string
	deliveryTimeout time.Duration
	sasl            *saslWatch // nil without SASL
	// verified is set once the cluster answered a Ping (so it is reachable
	// and took the credentials) and cleared by any failed Send.
	verified atomic.Bool
}

// saslWatch notices a broker hanging up during SASL authentication. Kafka
// answers bad credentials with SASL_AUTHENTICATION_FAILED, which franz-go
// reports as such; but some brokers (Kafka before 1.0, kfake) just close the
// connection, which franz-go sees as a plain EOF and retries as network
// trouble until the delivery timeout. Remembering where the EOF happened lets
// Send call it an authentication failure instead.
type saslWatch struct{ hungUp atomic.Bool }

func (w *saslWatch) OnBrokerE2E(_ kgo.BrokerMetadata, key int16, e2e kgo.BrokerE2E) {
	switch kmsg.Key(key) {
	case kmsg.SASLHandshake, kmsg.SASLAuthenticate:
		if e2e.Err() != nil {
			w.hungUp.Store(true)
		}
	case kmsg.ApiVersions: // exchanged before authentication: proves nothing
	default:
		// Any other request answered means a connection authenticated.
		if e2e.Err() == nil {
			w.hungUp.Store(false)
		}
	}
}

// Open validates cfg and builds the producer. It does not contact the
// cluster: a cluster that is down now may be up by the first Send, and the
// delivery loop handles that through Send's errors. Use Ping to check a
// config eagerly (e.g. a "test connection" button).
func Open(ctx context.Context, cfg Config) (*Sink, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("kafkasink: open: %w", err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts, err := cfg.connOpts()
	if err != nil {
		return nil, err
	}
	deliveryTimeout := defaultDeliveryTimeout
	if cfg.deliveryTimeout > 0 {
		deliveryTimeout = cfg.deliveryTimeout
	}
	opts = append(opts,
		kgo.ClientID("flock-api"),
		kgo.DefaultProduceTopic(cfg.Topic),
		// Idempotence (kgo's default, stated here because it matters)
		// with acks=all means a retried batch is neither lost on a leader
		// change nor written twice.
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.RecordDeliveryTimeout(deliveryTimeout),
		// Send is synchronous and already hands over all its records at
		// once; lingering would only add latency.
		kgo.ProducerLinger(0),
		// kgo.AllowAutoTopicCreation is deliberately not set: the topic
		// is the customer's to create, and asking the broker to create
		// it would silently create a misspelt one.
	)
	var watch *saslWatch
	if cfg.SASL.Mechanism != MechanismNone {
		watch = new(saslWatch)
		opts = append(opts, kgo.WithHooks(watch))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafkasink: open producer for %v: %w", cfg.Brokers, err)
	}
	return &Sink{client: cl, topic: cfg.Topic, deliveryTimeout: deliveryTimeout, sasl: watch}, nil
}

// connOpts are the client options for reaching and authenticating to the
// cluster, shared by the producer and by tests' consumers.
func (c Config) connOpts() ([]kgo.Opt, error) {
	opts := []kgo.Opt{kgo.SeedBrokers(c.Brokers...)}
	if c.DialTimeout > 0 {
		opts = append(opts, kgo.DialTimeout(c.DialTimeout))
	}
	var tc *tls.Config
	if c.TLS {
		var err error
		if tc, err = c.tlsConfig(); err != nil {
			return nil, fmt.Errorf("%w: tls: %w", ErrInvalidConfig, err)
		}
	}
	switch {
	case c.Dial != nil:
		dial := c.Dial
		opts = append(opts, kgo.Dialer(func(ctx context.Context, network, host string) (net.Conn, error) {
			conn, err := dial(ctx, network, host)
			if err != nil || tc == nil {
				return conn, err
			}
			cfg := tc.Clone()
			if cfg.ServerName == "" {
				cfg.ServerName, _, _ = net.SplitHostPort(host)
			}
			tconn := tls.Client(conn, cfg)
			if err := tconn.HandshakeContext(ctx); err != nil {
				conn.Close()
				return nil, err
			}
			return tconn, nil
		}))
	case tc != nil:
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	switch c.SASL.Mechanism {
	case MechanismPlain:
		opts = append(opts, kgo.SASL(plain.Auth{User: c.SASL.Username, Pass: c.SASL.Password}.AsMechanism()))
	case MechanismScramSHA256:
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASL.Username, Pass: c.SASL.Password}.AsSha256Mechanism()))
	case MechanismScramSHA512:
		opts = append(opts, kgo.SASL(scram.Auth{User: c.SASL.Username, Pass: c.SASL.Password}.AsSha512Mechanism()))
	}
	return opts, nil
}

// Ping checks that a broker is reachable and accepts the credentials. It
// gives up after the delivery timeout, like Send.
func (s *Sink) Ping(ctx context.Context) error {
	if err := s.ping(ctx); err != nil {
		return s.wrapErr(fmt.Sprintf("kafkasink: ping cluster of topic %q", s.topic), err)
	}
	return nil
}

func (s *Sink) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.deliveryTimeout)
	defer cancel()
	if err := s.client.Ping(ctx); err != nil {
		return err
	}
	s.verified.Store(true)
	return nil
}

// Send produces evs and waits until the cluster has acknowledged all of them
// (acks=all) or one has failed. On error some events may have been written;
// the idempotent producer keeps the order within a key, and the delivery loop
// resends, so consumers must tolerate duplicates (ce_id identifies them).
func (s *Sink) Send(ctx context.Context, evs ...Event) error {
	if len(evs) == 0 {
		return nil
	}
	recs := make([]*kgo.Record, len(evs))
	for i, ev := range evs {
		r, err := s.record(ev)
		if err != nil {
			return fmt.Errorf("kafkasink: send event %d (id %q): %w", i, ev.ID, err)
		}
		recs[i] = r
	}
	what := fmt.Sprintf("kafkasink: send %d event(s) to topic %q", len(evs), s.topic)
	// A cold sink (or one whose last Send failed) checks the connection
	// first: franz-go retries a failing authentication or an unreachable
	// cluster until the delivery timeout, so without this a wrong password
	// would take 15s to report, on every attempt of the delivery loop.
	if !s.verified.Load() {
		if err := s.ping(ctx); err != nil {
			return s.wrapErr(what+": connect", err)
		}
	}
	if err := s.client.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		s.verified.Store(false)
		return s.wrapErr(what, err)
	}
	return nil
}

// Close releases the client's connections. Sends in flight fail.
func (s *Sink) Close() { s.client.Close() }

func (s *Sink) record(ev Event) (*kgo.Record, error) {
	switch {
	case ev.ID == "":
		return nil, fmt.Errorf("%w: id is empty", ErrInvalidEvent)
	case ev.Source == "":
		return nil, fmt.Errorf("%w: source is empty", ErrInvalidEvent)
	case ev.Type == "":
		return nil, fmt.Errorf("%w: type is empty", ErrInvalidEvent)
	case len(ev.Data) > 0 && !json.Valid(ev.Data):
		// The record says content-type application/json; a consumer
		// trusting that must not get something else.
		return nil, fmt.Errorf("%w: data is not valid JSON", ErrInvalidEvent)
	}
	h := make([]kgo.RecordHeader, 0, 7)
	add := func(k, v string) { h = append(h, kgo.RecordHeader{Key: k, Value: []byte(v)}) }
	add("ce_specversion", "1.0")
	add("ce_id", ev.ID)
	add("ce_source", ev.Source)
	add("ce_type", ev.Type)
	if !ev.Time.IsZero() {
		// RFC3339Nano is valid RFC 3339 and keeps sub-second order.
		add("ce_time", ev.Time.UTC().Format(time.RFC3339Nano))
	}
	if ev.Subject != "" {
		add("ce_subject", ev.Subject)
	}
	value := ev.Data
	if len(value) == 0 {
		// A null value is a tombstone: on a compacted topic it would
		// delete the key's earlier events. An event without data is
		// sent as an empty value instead, with no content type.
		value = []byte{}
	} else {
		add("content-type", "application/json")
	}
	// The record timestamp is left to the producer (now): brokers reject
	// timestamps too far from their clock, and a replayed old event must
	// still be accepted; the event's own time is in ce_time.
	return &kgo.Record{Topic: s.topic, Key: ev.Key, Value: value, Headers: h}, nil
}
