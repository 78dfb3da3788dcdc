package asyncapi

// Validator checks device payloads and Kafka records against the schemas of
// the document before anything else looks at them: a malformed or invalid
// payload is refused with the reasons, and never reaches a store.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
	"golang.org/x/text/language"
	"golang.org/x/text/message"

	"github.com/flock-io/flock-api/internal/devicetopic"
)

// ErrUnknownChannel is a kind of message no channel of the document has.
var ErrUnknownChannel = errors.New("no such device channel")

// PayloadError says why a payload was refused.
type PayloadError struct {
	Kind      string
	Malformed bool
	Problems  []string
}

func (e *PayloadError) Error() string {
	if e.Malformed {
		return fmt.Sprintf("%s payload is not JSON: %s", e.Kind, strings.Join(e.Problems, "; "))
	}
	return fmt.Sprintf("%s payload does not match its schema: %s", e.Kind, strings.Join(e.Problems, "; "))
}

// Validator holds the compiled payload schema of every device channel.
type Validator struct {
	byKind  map[string]*jsonschema.Schema
	byTopic map[string]*jsonschema.Schema // Kafka topics, by name
}

// NewValidator compiles the schemas of the embedded document. It reads which
// schema each channel carries from the document itself, so a channel added
// there is validated without code changes.
func NewValidator() (*Validator, error) {
	var doc map[string]any
	if err := yaml.Unmarshal(YAML, &doc); err != nil {
		return nil, fmt.Errorf("parse asyncapi document: %w", err)
	}
	// jsonschema wants JSON's types (float64 numbers, string keys).
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("convert asyncapi document: %w", err)
	}
	jdoc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("convert asyncapi document: %w", err)
	}
	const url = "https://flock.invalid/asyncapi.json"
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft7) // AsyncAPI schemas are a superset of draft 7
	c.AssertFormat()
	if err := c.AddResource(url, jdoc); err != nil {
		return nil, fmt.Errorf("load asyncapi document: %w", err)
	}
	v := &Validator{byKind: map[string]*jsonschema.Schema{}, byTopic: map[string]*jsonschema.Schema{}}
	channels, _ := doc["channels"].(map[string]any)
	messages := components(doc, "messages")
	for name, ch := range channels {
		chm, _ := ch.(map[string]any)
		addr, _ := chm["address"].(string)
		kind, device := strings.CutPrefix(addr, devicetopic.Prefix+"{deviceId}/")
		msgs, _ := chm["messages"].(map[string]any)
		for _, m := range msgs {
			ref := refOf(m)
			msg, _ := messages[strings.TrimPrefix(ref, "#/components/messages/")].(map[string]any)
			payload := refOf(msg["payload"])
			if payload == "" {
				return nil, fmt.Errorf("channel %s: message %s has no payload schema reference", name, ref)
			}
			sch, err := c.Compile(url + payload)
			if err != nil {
				return nil, fmt.Errorf("compile %s of channel %s: %w", payload, name, err)
			}
			if device {
				v.byKind[kind] = sch
			} else if !strings.Contains(addr, "{") {
				v.byTopic[addr] = sch
			}
		}
	}
	if len(v.byKind) == 0 {
		return nil, errors.New("the asyncapi document has no device channels")
	}
	return v, nil
}

func components(doc map[string]any, kind string) map[string]any {
	comp, _ := doc["components"].(map[string]any)
	m, _ := comp[kind].(map[string]any)
	return m
}

func refOf(v any) string {
	m, _ := v.(map[string]any)
	s, _ := m["$ref"].(string)
	return s
}

// Kinds lists the device channel kinds (state, telemetry, ...).
func (v *Validator) Kinds() []string {
	out := make([]string, 0, len(v.byKind))
	for k := range v.byKind {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Validate checks a payload of a kind of device message.
func (v *Validator) Validate(kind string, payload []byte) error {
	_, err := v.Decode(kind, payload)
	return err
}

// ValidateRecord checks the value of a record on one of the document's
// Kafka topics.
func (v *Validator) ValidateRecord(topic string, value []byte) error {
	sch, ok := v.byTopic[topic]
	if !ok {
		return fmt.Errorf("%w: topic %q", ErrUnknownChannel, topic)
	}
	return validate(sch, topic, value)
}

// Decode checks a payload of a kind of device message and returns it as
// the schema saw it: map[string]any, []any, string, json.Number, bool or
// nil. A caller that needs the values reads them from this rather than
// parsing the payload a second time.
func (v *Validator) Decode(kind string, payload []byte) (any, error) {
	sch, ok := v.byKind[kind]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownChannel, kind)
	}
	return decode(sch, kind, payload)
}

func validate(sch *jsonschema.Schema, kind string, payload []byte) error {
	_, err := decode(sch, kind, payload)
	return err
}

func decode(sch *jsonschema.Schema, kind string, payload []byte) (any, error) {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(payload))
	if err != nil {
		return nil, &PayloadError{Kind: kind, Malformed: true, Problems: []string{err.Error()}}
	}
	if err := sch.Validate(inst); err != nil {
		var ve *jsonschema.ValidationError
		if errors.As(err, &ve) {
			return nil, &PayloadError{Kind: kind, Problems: leaves(ve)}
		}
		return nil, &PayloadError{Kind: kind, Problems: []string{err.Error()}}
	}
	return inst, nil
}

var english = message.NewPrinter(language.English)

// leaves lists the innermost failures as "/pointer: message".
func leaves(ve *jsonschema.ValidationError) []string {
	var out []string
	var walk func(e *jsonschema.ValidationError)
	walk = func(e *jsonschema.ValidationError) {
		if len(e.Causes) == 0 {
			out = append(out, "/"+strings.Join(e.InstanceLocation, "/")+": "+e.ErrorKind.LocalizedString(english))
			return
		}
		for _, c := range e.Causes {
			walk(c)
		}
	}
	walk(ve)
	return out
}
