package eventdelivery

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/kafkasink"
	"github.com/flock-io/flock-api/internal/secretbox"
	"github.com/flock-io/flock-api/internal/webhook"
)

// DefaultSchedule is the wait before each retry: about a day in all, as
// Standard Webhooks suggests, each with ±20% jitter so a receiver that
// comes back is not hit by every delivery at once.
var DefaultSchedule = []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour}

// NextAttempt is when to try again after the attempts made so far failed,
// or false when the schedule is spent.
func NextAttempt(schedule []time.Duration, attempts int, now time.Time) (time.Time, bool) {
	if attempts < 1 || attempts > len(schedule) {
		return time.Time{}, false
	}
	d := schedule[attempts-1]
	if j := int64(d) / 5; j > 0 {
		n, err := rand.Int(rand.Reader, big.NewInt(2*j))
		if err == nil {
			d += time.Duration(n.Int64() - j)
		}
	}
	return now.Add(d), true
}

// LoadKey returns the box sealing endpoints' secrets: from
// FLOCK_EVENTS_ENCRYPTION_KEY, or in dev mode one made once and kept in
// PostgreSQL. Outside dev mode without a key it fails: secrets must not
// sit beside the key that seals them.
func LoadKey(ctx context.Context, pool *pgxpool.Pool, configured string, dev bool) (*secretbox.Box, error) {
	if configured != "" {
		k, err := secretbox.ParseKey(configured)
		if err != nil {
			return nil, fmt.Errorf("FLOCK_EVENTS_ENCRYPTION_KEY: %w", err)
		}
		return secretbox.New(k)
	}
	if !dev {
		return nil, errors.New("FLOCK_EVENTS_ENCRYPTION_KEY is required (32 bytes, base64: openssl rand -base64 32)")
	}
	fresh := make([]byte, 32)
	if _, err := rand.Read(fresh); err != nil {
		return nil, err
	}
	q := db.New(pool)
	if err := q.EventDevKeyInit(ctx, fresh); err != nil {
		return nil, fmt.Errorf("store the dev events key: %w", err)
	}
	k, err := q.EventDevKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("load the dev events key: %w", err)
	}
	return secretbox.New(k)
}

// aad binds a sealed value to its endpoint and field.
func aad(endpoint uuid.UUID, field string) []byte { return []byte(endpoint.String() + "/" + field) }

// Seal seals an endpoint's secret (field "secret" or "kafka_password").
func Seal(box *secretbox.Box, endpoint uuid.UUID, field, value string) []byte {
	if value == "" {
		return nil
	}
	return box.Seal([]byte(value), aad(endpoint, field))
}

// Open opens what Seal sealed; nil opens to "".
func Open(box *secretbox.Box, endpoint uuid.UUID, field string, sealed []byte) (string, error) {
	if len(sealed) == 0 {
		return "", nil
	}
	b, err := box.Open(sealed, aad(endpoint, field))
	if err != nil {
		return "", fmt.Errorf("open the %s of endpoint %s: %w", field, endpoint, err)
	}
	return string(b), nil
}

// KafkaSettings is an endpoint's kafka column (the password is sealed
// apart).
type KafkaSettings struct {
	Brokers       []string `json:"brokers"`
	Topic         string   `json:"topic"`
	SASLMechanism string   `json:"sasl_mechanism,omitempty"`
	Username      string   `json:"username,omitempty"`
	TLS           bool     `json:"tls,omitempty"`
}

// Config is the kafkasink configuration of the settings with password.
func (k KafkaSettings) Config(password string) kafkasink.Config {
	c := kafkasink.Config{Brokers: k.Brokers, Topic: k.Topic, TLS: k.TLS, DialTimeout: 10 * time.Second}
	if k.SASLMechanism != "" && k.SASLMechanism != "none" {
		c.SASL.Mechanism, c.SASL.Username, c.SASL.Password = k.SASLMechanism, k.Username, password
	}
	return c
}

// Result is one attempt's outcome.
type Result struct {
	Status   int // 0: no HTTP status (Kafka, or no response)
	Duration time.Duration
	Response []byte
	Err      error // nil on success
	Retry    bool  // whether a later attempt may succeed
}

// StatusCode is the HTTP status as the database keeps it: nil when there
// was none.
func (r Result) StatusCode() *int32 {
	if r.Status == 0 {
		return nil
	}
	c := int32(r.Status)
	return &c
}

// Deliverer sends an event to an endpoint of either kind.
type Deliverer struct {
	Box      *secretbox.Box
	Webhooks *webhook.Sender
	// Policy guards connections to customers' Kafka brokers as the
	// webhook sender's are (SSRF).
	Policy webhook.Policy
	// KafkaTLSInsecure skips verifying customers' brokers' certificates
	// (tests only).
	KafkaTLSInsecure bool

	mu    sync.Mutex
	sinks map[uuid.UUID]*sink
}

type sink struct {
	cfg  string // the settings the sink was opened with
	sink *kafkasink.Sink
}

// Deliver makes one attempt.
func (d *Deliverer) Deliver(ctx context.Context, ep db.EventEndpoint, ev db.OrgEvent, now time.Time) Result {
	switch ep.Kind {
	case "webhook":
		secrets, err := d.secrets(ep, now)
		if err != nil {
			return Result{Err: err}
		}
		body, err := CloudEvent(ev, false)
		if err != nil {
			return Result{Err: err}
		}
		r := d.Webhooks.Send(ctx, ep.Url, webhook.Message{ID: ev.ID.String(), Time: now, Body: body,
			ContentType: "application/cloudevents+json", Secrets: secrets})
		return Result{Status: r.Status, Duration: r.Duration, Response: r.Response, Err: r.Err, Retry: r.Retry}
	case "kafka":
		start := time.Now()
		s, err := d.sink(ctx, ep)
		if err != nil {
			return Result{Duration: time.Since(start), Err: err, Retry: kafkasink.Retryable(err)}
		}
		err = s.Send(ctx, kafkasink.Event{ID: ev.ID.String(), Source: ev.Source, Type: ev.Type, Subject: ev.Subject,
			Time: ev.Time, Key: []byte(ev.OrderKey), Data: ev.Data})
		r := Result{Duration: time.Since(start), Err: err}
		if err != nil {
			r.Retry = kafkasink.Retryable(err)
		}
		return r
	}
	return Result{Err: fmt.Errorf("endpoint %s has unknown kind %q", ep.ID, ep.Kind)}
}

// secrets are the secrets that sign now: the current one, and the
// previous one during its overlap.
func (d *Deliverer) secrets(ep db.EventEndpoint, now time.Time) ([]string, error) {
	cur, err := Open(d.Box, ep.ID, "secret", ep.Secret)
	if err != nil {
		return nil, err
	}
	out := []string{cur}
	if len(ep.PreviousSecret) > 0 && ep.PreviousExpiresAt != nil && now.Before(*ep.PreviousExpiresAt) {
		prev, err := Open(d.Box, ep.ID, "secret", ep.PreviousSecret)
		if err != nil {
			return nil, err
		}
		out = append(out, prev)
	}
	return out, nil
}

// sink returns the endpoint's producer, opening (or reopening, when its
// settings changed) it on first use.
func (d *Deliverer) sink(ctx context.Context, ep db.EventEndpoint) (*kafkasink.Sink, error) {
	var ks KafkaSettings
	if err := json.Unmarshal(ep.Kafka, &ks); err != nil {
		return nil, fmt.Errorf("kafka settings of endpoint %s: %w", ep.ID, err)
	}
	pw, err := Open(d.Box, ep.ID, "kafka_password", ep.KafkaPassword)
	if err != nil {
		return nil, err
	}
	key := string(ep.Kafka) + "\x00" + string(ep.KafkaPassword)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.sinks == nil {
		d.sinks = map[uuid.UUID]*sink{}
	}
	if s, ok := d.sinks[ep.ID]; ok {
		if s.cfg == key {
			return s.sink, nil
		}
		s.sink.Close()
		delete(d.sinks, ep.ID)
	}
	cfg := ks.Config(pw)
	cfg.TLSInsecureSkipVerify = d.KafkaTLSInsecure
	cfg.Dial = d.Policy.DialContext
	s, err := kafkasink.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	d.sinks[ep.ID] = &sink{cfg: key, sink: s}
	return s, nil
}

// Close closes the Kafka producers.
func (d *Deliverer) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, s := range d.sinks {
		s.sink.Close()
		delete(d.sinks, id)
	}
}
