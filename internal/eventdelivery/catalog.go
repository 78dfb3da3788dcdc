// Package eventdelivery is what the API and the events-gateway share about
// customers' events: the catalogue of types (read from the AsyncAPI
// document's customer* channels, the source of truth), how internal
// Kafka records become CloudEvents with stable ids, how an event is
// rendered for each kind of endpoint, the retry schedule, and the sealing
// of endpoints' secrets.
package eventdelivery

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"

	"github.com/flock-io/flock-api/asyncapi"
)

// Type is one event type of the catalogue.
type Type struct {
	Type      string         `json:"type"`
	Summary   string         `json:"summary"`
	OrderedBy string         `json:"ordered_by,omitempty"`
	Schema    map[string]any `json:"schema"`
}

var catalog = sync.OnceValues(loadCatalog)

// Catalog returns every event type, in the document's order.
func Catalog() ([]Type, error) { return catalog() }

// Known reports whether t is a type of the catalogue.
func Known(t string) bool {
	c, err := Catalog()
	if err != nil {
		return false
	}
	return slices.ContainsFunc(c, func(x Type) bool { return x.Type == t })
}

func loadCatalog() ([]Type, error) {
	var doc struct {
		// A node keeps the document's order of channels and messages.
		Channels   yaml.Node `yaml:"channels"`
		Components struct {
			Messages map[string]struct {
				Title     string         `yaml:"title"`
				Summary   string         `yaml:"summary"`
				OrderedBy string         `yaml:"x-ordered-by"`
				Payload   map[string]any `yaml:"payload"`
			} `yaml:"messages"`
			Schemas map[string]any `yaml:"schemas"`
		} `yaml:"components"`
	}
	if err := yaml.Unmarshal(asyncapi.YAML, &doc); err != nil {
		return nil, fmt.Errorf("parse the asyncapi document: %w", err)
	}
	// Every customer* channel's messages, in document order: one channel
	// per payload schema, so the generated Go types stay one per schema.
	var refs []string
	for i := 0; i+1 < len(doc.Channels.Content); i += 2 {
		if !strings.HasPrefix(doc.Channels.Content[i].Value, "customer") {
			continue
		}
		var ch struct {
			Messages yaml.Node `yaml:"messages"`
		}
		if err := doc.Channels.Content[i+1].Decode(&ch); err != nil {
			return nil, err
		}
		for k := 0; k+1 < len(ch.Messages.Content); k += 2 {
			var ref struct {
				Ref string `yaml:"$ref"`
			}
			if err := ch.Messages.Content[k+1].Decode(&ref); err != nil {
				return nil, err
			}
			refs = append(refs, ref.Ref)
		}
	}
	if len(refs) == 0 {
		return nil, fmt.Errorf("the asyncapi document has no customer* channels")
	}
	var out []Type
	for _, r := range refs {
		ref := struct{ Ref string }{r}
		name := strings.TrimPrefix(ref.Ref, "#/components/messages/")
		m, ok := doc.Components.Messages[name]
		if !ok || m.Title == "" {
			return nil, fmt.Errorf("customer event message %s has no title (its event type)", name)
		}
		schema, err := inline(m.Payload, doc.Components.Schemas, 0)
		if err != nil {
			return nil, fmt.Errorf("schema of %s: %w", m.Title, err)
		}
		out = append(out, Type{Type: m.Title, Summary: m.Summary, OrderedBy: m.OrderedBy, Schema: schema.(map[string]any)})
	}
	return out, nil
}

// inline replaces every $ref to a component schema by the schema, so the
// catalogue's schemas stand alone.
func inline(v any, schemas map[string]any, depth int) (any, error) {
	if depth > 32 {
		return nil, fmt.Errorf("schema references nest too deep")
	}
	switch x := v.(type) {
	case map[string]any:
		if ref, ok := x["$ref"].(string); ok {
			name := strings.TrimPrefix(ref, "#/components/schemas/")
			s, ok := schemas[name]
			if !ok {
				return nil, fmt.Errorf("unknown schema %s", ref)
			}
			return inline(s, schemas, depth+1)
		}
		out := make(map[string]any, len(x))
		for k, e := range x {
			r, err := inline(e, schemas, depth+1)
			if err != nil {
				return nil, err
			}
			out[k] = r
		}
		return out, nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			r, err := inline(e, schemas, depth+1)
			if err != nil {
				return nil, err
			}
			out[i] = r
		}
		return out, nil
	}
	return v, nil
}
