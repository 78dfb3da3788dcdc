package asyncapi_test

import (
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/gen"
)

// Schemas a device meets in both documents must be one schema: a device
// reports its state over HTTP (OpenAPI) or MQTT (AsyncAPI), and the two are
// one sequence. Each document keeps its own copy, since each is bundled
// alone; this test keeps them equal (descriptions and examples aside).
func TestSchemasSharedWithTheOpenAPIDocument(t *testing.T) {
	var async, open map[string]any
	if err := yaml.Unmarshal(asyncapi.YAML, &async); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(gen.OpenAPIYAML, &open); err != nil {
		t.Fatal(err)
	}
	asyncSchemas := dig(t, async, "components", "schemas")
	openSchemas := dig(t, open, "components", "schemas")
	for _, name := range []string{"ReportedState", "ServiceStatus"} {
		t.Run(name, func(t *testing.T) {
			a := resolve(t, asyncSchemas, asyncSchemas[name], "#/components/schemas/")
			o := resolve(t, openSchemas, openSchemas[name], "#/components/schemas/")
			if a == nil || o == nil {
				t.Fatalf("%s missing: asyncapi %v, openapi %v", name, a != nil, o != nil)
			}
			if !reflect.DeepEqual(a, o) {
				t.Fatalf("%s differs:\nasyncapi %v\nopenapi  %v", name, a, o)
			}
		})
	}
}

func dig(t *testing.T, m map[string]any, keys ...string) map[string]any {
	t.Helper()
	for _, k := range keys {
		next, ok := m[k].(map[string]any)
		if !ok {
			t.Fatalf("no %s in the document", k)
		}
		m = next
	}
	return m
}

// resolve inlines local $refs and drops what documents a schema rather than
// constrains it.
func resolve(t *testing.T, schemas map[string]any, v any, prefix string) any {
	t.Helper()
	switch x := v.(type) {
	case map[string]any:
		if ref, ok := x["$ref"].(string); ok {
			name, ok := strings.CutPrefix(ref, prefix)
			if !ok {
				t.Fatalf("unexpected $ref %s", ref)
			}
			return resolve(t, schemas, schemas[name], prefix)
		}
		out := map[string]any{}
		for k, e := range x {
			if k == "description" || k == "example" || k == "examples" || k == "title" {
				continue
			}
			out[k] = resolve(t, schemas, e, prefix)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = resolve(t, schemas, e, prefix)
		}
		return out
	default:
		return v
	}
}
