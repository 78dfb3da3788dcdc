package eventdelivery

import (
	"encoding/json"
	"testing"

	"github.com/flock-io/flock-api/internal/bus"
)

// TestCatalog: every type the gateway makes is in the catalogue, with a
// schema, and the device types promise order by device.
func TestCatalog(t *testing.T) {
	c, err := Catalog()
	if err != nil {
		t.Fatal(err)
	}
	byType := map[string]Type{}
	for _, ty := range c {
		if ty.Schema["type"] != "object" || ty.Summary == "" {
			t.Errorf("%s: schema %v, summary %q", ty.Type, ty.Schema, ty.Summary)
		}
		byType[ty.Type] = ty
	}
	for typ, ordered := range map[string]string{
		"io.flock.device.online": "device", "io.flock.device.offline": "device", "io.flock.device.state.changed": "device",
		"io.flock.device.update.progressed": "device", "io.flock.rollout.group.started": "rollout", "io.flock.rollout.rolled.back": "rollout",
		"io.flock.event-endpoint.disabled": "", "io.flock.event-endpoint.test": "",
		"io.flock.build.finished": "", "io.flock.audit.recorded": "",
		"io.flock.release.created": "release", "io.flock.release.finalized": "release", "io.flock.release.failed": "release",
	} {
		ty, ok := byType[typ]
		if !ok || ty.OrderedBy != ordered {
			t.Errorf("%s: %+v (in the catalogue %v), want ordered by %q", typ, ty, ok, ordered)
		}
	}
	if Known("io.flock.nope") {
		t.Error("an unknown type is known")
	}
}

// TestFromRecord: records become their organisation's events, the same
// record always with the same id, records customers do not see with none.
func TestFromRecord(t *testing.T) {
	org, fleet, dev := "0b7d4c8e-52f4-4e4f-9d4a-3f9f5c0e2a11", "1b7d4c8e-52f4-4e4f-9d4a-3f9f5c0e2a11", "2b7d4c8e-52f4-4e4f-9d4a-3f9f5c0e2a11"
	for _, c := range []struct {
		name  string
		rec   bus.Record
		typ   string
		order string
	}{
		{"connect", bus.Record{Topic: bus.TopicDeviceConnectivity, Key: []byte(dev),
			Value: []byte(`{"device_id":"` + dev + `","org_id":"` + org + `","fleet_id":"` + fleet + `","event":"connected","connection_seq":3,"at":"2026-12-01T10:00:00Z"}`)},
			"io.flock.device.online", dev},
		{"state", bus.Record{Topic: bus.TopicDeviceState, Key: []byte(dev),
			Value: []byte(`{"device_id":"` + dev + `","org_id":"` + org + `","fleet_id":"` + fleet + `","received_at":"2026-12-01T10:00:00Z","state":{"seq":7}}`)},
			"io.flock.device.state.changed", dev},
		{"rollout", bus.Record{Topic: bus.TopicRolloutEvents, Key: []byte("r1"),
			Value: []byte(`{"id":"3b7d4c8e-52f4-4e4f-9d4a-3f9f5c0e2a11","rollout_id":"4b7d4c8e-52f4-4e4f-9d4a-3f9f5c0e2a11","org_id":"` + org + `","fleet_id":"` + fleet + `","event":"group_started","state":"running","group":1,"at":"2026-12-01T10:00:00Z"}`)},
			"io.flock.rollout.group.started", "4b7d4c8e-52f4-4e4f-9d4a-3f9f5c0e2a11"},
		{"telemetry is not an event", bus.Record{Topic: bus.TopicDeviceTelemetry, Value: []byte(`{}`)}, "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			ev, err := FromRecord(c.rec)
			if err != nil {
				t.Fatal(err)
			}
			if c.typ == "" {
				if ev != nil {
					t.Fatalf("made %+v", ev)
				}
				return
			}
			again, _ := FromRecord(c.rec)
			if ev.Type != c.typ || ev.OrderKey != c.order || ev.OrgID.String() != org || !ev.FleetID.Valid || again.ID != ev.ID {
				t.Fatalf("event %+v (again %s)", ev, again.ID)
			}
			if ev.Source != "/orgs/"+org+"/fleets/"+fleet || !json.Valid(ev.Data) {
				t.Errorf("source %s, data %s", ev.Source, ev.Data)
			}
		})
	}
}
