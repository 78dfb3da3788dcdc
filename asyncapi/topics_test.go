package asyncapi_test

import (
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/internal/bus"
)

// The Kafka topics the bus creates and names are the document's Kafka
// channels, no more and no fewer.
func TestKafkaTopicsMatchTheDocument(t *testing.T) {
	var doc struct {
		Servers  map[string]struct{ Protocol string } `yaml:"servers"`
		Channels map[string]struct {
			Address string `yaml:"address"`
			Servers []struct {
				Ref string `yaml:"$ref"`
			} `yaml:"servers"`
		} `yaml:"channels"`
	}
	if err := yaml.Unmarshal(asyncapi.YAML, &doc); err != nil {
		t.Fatal(err)
	}
	var inDoc []string
	for _, ch := range doc.Channels {
		if len(ch.Servers) == 1 && doc.Servers[strings.TrimPrefix(ch.Servers[0].Ref, "#/servers/")].Protocol == "kafka" {
			inDoc = append(inDoc, ch.Address)
		}
	}
	inBus := slices.Clone(bus.AllTopics)
	sort.Strings(inDoc)
	sort.Strings(inBus)
	if !slices.Equal(inDoc, inBus) {
		t.Fatalf("the document's Kafka channels %v, bus.AllTopics %v", inDoc, inBus)
	}
}
