// Package nudgetest reads target nudges off the message bus for tests, and
// checks each against the AsyncAPI document as it arrives.
package nudgertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/bus"
)

// Validator checks DeviceCommandRecords: the whole record against its
// schema in the AsyncAPI document (asyncapi.Validator knows only the device
// channels), and the nudge it carries with asyncapi.Validator, as the MQTT
// payload the ingester will make of it.
type Validator struct {
	record *jsonschema.Schema
	device *asyncapi.Validator
}

// NewValidator compiles the schemas.
func NewValidator() (*Validator, error) {
	dv, err := asyncapi.NewValidator()
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := yaml.Unmarshal(asyncapi.YAML, &doc); err != nil {
		return nil, fmt.Errorf("parse asyncapi document: %w", err)
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	jdoc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	const url = "https://flock.invalid/asyncapi.json"
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft7)
	c.AssertFormat()
	if err := c.AddResource(url, jdoc); err != nil {
		return nil, err
	}
	sch, err := c.Compile(url + "#/components/schemas/DeviceCommandRecord")
	if err != nil {
		return nil, fmt.Errorf("compile DeviceCommandRecord: %w", err)
	}
	return &Validator{record: sch, device: dv}, nil
}

// Check validates a record of flock.device.commands.v1 that should be a
// target nudge, and returns its device and version.
func (v *Validator) Check(r bus.Record) (uuid.UUID, string, error) {
	if r.Topic != bus.TopicDeviceCommands {
		return uuid.Nil, "", fmt.Errorf("topic %q, want %q", r.Topic, bus.TopicDeviceCommands)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(r.Value))
	if err != nil {
		return uuid.Nil, "", fmt.Errorf("record is not JSON: %w: %s", err, r.Value)
	}
	if err := v.record.Validate(inst); err != nil {
		return uuid.Nil, "", fmt.Errorf("record does not match DeviceCommandRecord: %w: %s", err, r.Value)
	}
	var rec events.DeviceCommandRecord
	if err := json.Unmarshal(r.Value, &rec); err != nil {
		return uuid.Nil, "", err
	}
	if rec.Kind == nil || *rec.Kind != events.CommandKindTarget || rec.Target == nil || rec.Command != nil {
		return uuid.Nil, "", fmt.Errorf("not a target nudge: %s", r.Value)
	}
	nudge, _ := json.Marshal(rec.Target)
	if err := v.device.Validate("target", nudge); err != nil {
		return uuid.Nil, "", err
	}
	id, err := uuid.Parse(rec.DeviceId)
	if err != nil {
		return uuid.Nil, "", err
	}
	if string(r.Key) != rec.DeviceId {
		return uuid.Nil, "", fmt.Errorf("key %q, want the device id %s", r.Key, rec.DeviceId)
	}
	if rec.Target.Version == "" {
		return uuid.Nil, "", errors.New("empty version")
	}
	return id, rec.Target.Version, nil
}

// Consumer collects the nudges published to the bus, per device.
type Consumer struct {
	v *Validator

	mu       sync.Mutex
	versions map[uuid.UUID][]string
	read     map[uuid.UUID]int
	total    int
	bad      []error
	changed  chan struct{}
}

// Consume reads flock.device.commands.v1 from its start with a consumer
// group of its own until the test ends.
func Consume(t testing.TB, b *bus.Bus) *Consumer {
	t.Helper()
	v, err := NewValidator()
	if err != nil {
		t.Fatal(err)
	}
	c := &Consumer{v: v, versions: map[uuid.UUID][]string{}, read: map[uuid.UUID]int{}, changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.Consume(ctx, "nudgetest-"+uuid.NewString(), []string{bus.TopicDeviceCommands},
			func(_ context.Context, recs []bus.Record) error {
				c.add(recs)
				return nil
			})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, bus.ErrClosed) {
			t.Errorf("consume nudges: %v", err)
		}
	})
	return c
}

func (c *Consumer) add(recs []bus.Record) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range recs {
		id, version, err := c.v.Check(r)
		if err != nil {
			c.bad = append(c.bad, err)
			continue
		}
		c.versions[id] = append(c.versions[id], version)
		c.total++
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

// Next waits (at most within) for the device's next nudge not yet returned
// and returns its version.
func (c *Consumer) Next(t testing.TB, device uuid.UUID, within time.Duration) string {
	t.Helper()
	deadline := time.After(within)
	for {
		version, ok, ch := c.poll(t, device)
		if ok {
			return version
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("no nudge for device %s within %s", device, within)
		}
	}
}

func (c *Consumer) poll(t testing.TB, device uuid.UUID) (string, bool, chan struct{}) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock() // also when failOnBad ends the test
	c.failOnBad(t)
	if vs, i := c.versions[device], c.read[device]; len(vs) > i {
		c.read[device] = i + 1
		return vs[i], true, nil
	}
	return "", false, c.changed
}

// Drain returns the device's nudges not yet returned, without waiting.
func (c *Consumer) Drain(t testing.TB, device uuid.UUID) []string {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failOnBad(t)
	vs, i := c.versions[device], c.read[device]
	c.read[device] = len(vs)
	return append([]string(nil), vs[i:]...)
}

// Total is the number of valid nudges seen so far.
func (c *Consumer) Total(t testing.TB) int {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failOnBad(t)
	return c.total
}

func (c *Consumer) failOnBad(t testing.TB) {
	t.Helper()
	if len(c.bad) > 0 {
		t.Fatalf("invalid records on %s: %v", bus.TopicDeviceCommands, c.bad)
	}
}
