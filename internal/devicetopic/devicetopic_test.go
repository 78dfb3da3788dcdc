package devicetopic_test

import (
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/uuid"
	"go.yaml.in/yaml/v3"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/internal/devicetopic"
)

// The package says what asyncapi/flock.yaml says: every MQTT channel's
// address is Prefix/{deviceId}/<kind>, the kinds Flock receives are
// FromDevice and those it sends ToDevice, and the re-authentication method
// is the one the document describes.
func TestMatchesTheAsyncAPIDocument(t *testing.T) {
	var doc struct {
		Info struct {
			Description string `yaml:"description"`
		} `yaml:"info"`
		Servers  map[string]struct{ Protocol string } `yaml:"servers"`
		Channels map[string]struct {
			Address string `yaml:"address"`
			Servers []struct {
				Ref string `yaml:"$ref"`
			} `yaml:"servers"`
		} `yaml:"channels"`
		Operations map[string]struct {
			Action  string `yaml:"action"`
			Channel struct {
				Ref string `yaml:"$ref"`
			} `yaml:"channel"`
		} `yaml:"operations"`
	}
	if err := yaml.Unmarshal(asyncapi.YAML, &doc); err != nil {
		t.Fatal(err)
	}
	kindOf := map[string]string{} // channel name -> kind
	for name, ch := range doc.Channels {
		if len(ch.Servers) != 1 || doc.Servers[strings.TrimPrefix(ch.Servers[0].Ref, "#/servers/")].Protocol != "mqtt" {
			continue
		}
		kind, ok := strings.CutPrefix(ch.Address, devicetopic.Prefix+"{deviceId}/")
		if !ok || strings.Contains(kind, "/") {
			t.Errorf("channel %s: address %s is not %s{deviceId}/<kind>", name, ch.Address, devicetopic.Prefix)
			continue
		}
		kindOf[name] = kind
	}
	var received, sent []string
	for name, op := range doc.Operations {
		kind, ok := kindOf[strings.TrimPrefix(op.Channel.Ref, "#/channels/")]
		if !ok {
			continue
		}
		switch op.Action {
		case "receive":
			received = append(received, kind)
		case "send":
			sent = append(sent, kind)
		default:
			t.Errorf("operation %s: action %q", name, op.Action)
		}
	}
	sorted := func(s []string) []string { s = slices.Clone(s); sort.Strings(s); return s }
	if got, want := sorted(received), sorted(devicetopic.FromDevice); !slices.Equal(got, want) {
		t.Errorf("the document receives %v from devices, the package says %v", got, want)
	}
	if got, want := sorted(sent), sorted(devicetopic.ToDevice); !slices.Equal(got, want) {
		t.Errorf("the document sends %v to devices, the package says %v", got, want)
	}
	for _, k := range devicetopic.FromDevice {
		if !devicetopic.IsFromDevice(k) || devicetopic.IsToDevice(k) {
			t.Errorf("kind %s: IsFromDevice/IsToDevice disagree with FromDevice", k)
		}
	}
	for _, k := range devicetopic.ToDevice {
		if !devicetopic.IsToDevice(k) || devicetopic.IsFromDevice(k) {
			t.Errorf("kind %s: IsFromDevice/IsToDevice disagree with ToDevice", k)
		}
	}
	if !strings.Contains(doc.Info.Description, "`"+devicetopic.ReauthMethod+"`") {
		t.Errorf("the document does not name the re-authentication method %s", devicetopic.ReauthMethod)
	}
}

func TestParse(t *testing.T) {
	id := uuid.New()
	for _, tt := range []struct {
		topic string
		kind  string
		ok    bool
	}{
		{devicetopic.Topic(id, devicetopic.State), devicetopic.State, true},
		{devicetopic.Topic(id, "anything"), "anything", true},
		{devicetopic.Prefix + strings.ToUpper(id.String()) + "/state", "", false},
		{devicetopic.Prefix + id.String() + "/state/more", "", false},
		{devicetopic.Prefix + id.String(), "", false},
		{devicetopic.Wildcard(devicetopic.State), "", false},
		{"flock/v2/devices/" + id.String() + "/state", "", false},
	} {
		got, kind, ok := devicetopic.Parse(tt.topic)
		if ok != tt.ok || kind != tt.kind || (ok && got != id) {
			t.Errorf("Parse(%q) = %s, %q, %v; want %q, %v", tt.topic, got, kind, ok, tt.kind, tt.ok)
		}
	}
}
