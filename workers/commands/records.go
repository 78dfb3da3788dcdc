package commands

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/bus"
)

// Command statuses, as the commands table and the API spell them.
const (
	StatusPending   = "pending"
	StatusDelivered = "delivered"
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusExpired   = "expired"
)

// Command types and the oldest agent that takes each, as
// asyncapi/flock.yaml's CommandType says.
const (
	TypeReboot         = "reboot"
	TypeRestartService = "restart_service"
	TypeIdentify       = "identify"
)

// MinAgentVersion is the oldest agent_version that supports each type.
var MinAgentVersion = map[string]string{
	TypeReboot:         "1.0.0",
	TypeIdentify:       "1.0.0",
	TypeRestartService: "1.1.0",
}

// Supports reports whether an agent reporting agentVersion takes commands
// of type typ. The version is a semantic version, the whole string or its
// last space-separated word ("1.1.0", "v1.1.0", "acme-agent 1.1.0"); an
// agent that reported none, or something else, supports nothing, since
// what it would do with a command is unknown.
func Supports(agentVersion, typ string) bool {
	want, ok := MinAgentVersion[typ]
	if !ok {
		return false
	}
	have, ok := parseVersion(agentVersion)
	if !ok {
		return false
	}
	min, _ := parseVersion(want)
	return compareVersions(have, min) >= 0
}

// version is MAJOR.MINOR.PATCH and whether a pre-release follows, which
// puts it below the release itself (1.1.0-rc.1 < 1.1.0). Build metadata is
// ignored, and pre-releases of one version are not ordered among
// themselves: none is a minimum.
type version struct {
	num [3]int
	pre bool
}

func parseVersion(s string) (version, bool) {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, ' '); i >= 0 {
		s = s[i+1:]
	}
	s = strings.TrimPrefix(s, "v")
	s, _, _ = strings.Cut(s, "+")
	core, pre, hasPre := strings.Cut(s, "-")
	parts := strings.Split(core, ".")
	if len(parts) != 3 || (hasPre && pre == "") {
		return version{}, false
	}
	var v version
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || p == "" || (len(p) > 1 && p[0] == '0') {
			return version{}, false
		}
		v.num[i] = n
	}
	v.pre = hasPre
	return v, true
}

func compareVersions(a, b version) int {
	for i := range a.num {
		if a.num[i] != b.num[i] {
			if a.num[i] < b.num[i] {
				return -1
			}
			return 1
		}
	}
	switch {
	case a.pre == b.pre:
		return 0
	case a.pre:
		return -1
	}
	return 1
}

// eventSpace names the event ids: one change of one command has one id,
// however often it is published (a retried transaction, a sweep that
// overlaps the normal path), so consumers can drop the copies.
var eventSpace = uuid.MustParse("5b0f1a0e-7c55-4c8e-9a39-6a3d5d0c2f17")

// EventID is the id of the event of command id reaching status.
func EventID(id uuid.UUID, status string) uuid.UUID {
	return uuid.NewSHA1(eventSpace, []byte(id.String()+"/"+status))
}

// DeviceRecord is the record of flock.device.commands.v1 that the relay
// turns into the device's commands message.
func DeviceRecord(c db.Command) bus.Record {
	typ := events.ValuesToCommandType[c.Type]
	kind := events.CommandKindCommand
	cmd := &events.Command{Id: c.ID.String(), ReservedType: &typ}
	if c.Service != nil {
		cmd.Service = *c.Service
	}
	return record(bus.TopicDeviceCommands, c.DeviceID, events.DeviceCommandRecord{DeviceId: c.DeviceID.String(), Kind: &kind, Command: cmd})
}

// EventRecord is the record of flock.device.command-events.v1 saying that
// c reached the status it has now.
func EventRecord(c db.Command) bus.Record {
	typ := events.ValuesToCommandType[c.Type]
	status := events.ValuesToCommandStatus[c.Status]
	ev := events.CommandEventRecord{
		Id: EventID(c.ID, c.Status).String(), CommandId: c.ID.String(),
		DeviceId: c.DeviceID.String(), OrgId: c.OrgID.String(), FleetId: c.FleetID.String(),
		ReservedType: &typ, Status: &status, At: statusAt(c).UTC().Format(time.RFC3339Nano),
	}
	if c.Service != nil {
		ev.Service = *c.Service
	}
	if c.Error != nil {
		ev.Error = *c.Error
	}
	return record(bus.TopicCommandEvents, c.DeviceID, ev)
}

// statusAt is when c reached its status.
func statusAt(c db.Command) time.Time {
	switch {
	case c.CompletedAt != nil:
		return *c.CompletedAt
	case c.DeliveredAt != nil:
		return *c.DeliveredAt
	}
	return c.CreatedAt
}

func record(topic string, device uuid.UUID, v any) bus.Record {
	b, err := json.Marshal(v)
	if err != nil {
		// Strings and enums only.
		panic(fmt.Sprintf("commands: encode %s record: %v", topic, err))
	}
	return bus.Record{Topic: topic, Key: []byte(device.String()), Value: b}
}
