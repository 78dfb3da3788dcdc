// Package devicetopic is where devices and Flock meet on MQTT, in one
// place: the topic layout flock/v1/devices/{uuid}/{kind}, which kinds a
// device publishes and which it receives, and the authentication method of
// re-authentication, all as asyncapi/flock.yaml states them (a test holds
// them against the document). The broker's rules, the ingester, the relay
// and the simulator all read them from here.
package devicetopic

import (
	"strings"

	"github.com/google/uuid"
)

// Prefix starts every device topic.
const Prefix = "flock/v1/devices/"

// Message kinds: the last level of a device topic.
const (
	State     = "state"
	Telemetry = "telemetry"
	Logs      = "logs"
	Events    = "events"
	Status    = "status"
	Target    = "target"
	Commands  = "commands"
	// CommandResults carries a device's answers to its commands.
	CommandResults = "command-results"
)

// FromDevice are the kinds a device publishes and Flock receives, in the
// document's order.
var FromDevice = []string{State, Telemetry, Logs, Events, Status, CommandResults}

// ToDevice are the kinds Flock sends and a device subscribes to.
var ToDevice = []string{Target, Commands}

// ReauthMethod is the MQTT v5 Authentication Method with which a device
// renews its token on an open connection (AUTH, reason 0x19, the new token
// as Authentication Data).
const ReauthMethod = "flock-device-token"

// IsFromDevice reports whether kind is one a device publishes.
func IsFromDevice(kind string) bool {
	switch kind {
	case State, Telemetry, Logs, Events, Status, CommandResults:
		return true
	}
	return false
}

// IsToDevice reports whether kind is one Flock sends to a device.
func IsToDevice(kind string) bool { return kind == Target || kind == Commands }

// Topic is the topic of a device's kind of message.
func Topic(device uuid.UUID, kind string) string { return Prefix + device.String() + "/" + kind }

// Wildcard is the filter of one kind for every device (flock/v1/devices/+/kind).
func Wildcard(kind string) string { return Prefix + "+/" + kind }

// Parse splits flock/v1/devices/<uuid>/<kind>, with the uuid in canonical
// form and a kind of one level (any kind: callers decide which they take).
// It does not allocate: the broker runs it for every message it routes.
func Parse(topic string) (uuid.UUID, string, bool) {
	rest, ok := strings.CutPrefix(topic, Prefix)
	if !ok || len(rest) < 38 || rest[36] != '/' || !IsCanonicalUUID(rest[:36]) {
		return uuid.Nil, "", false
	}
	kind := rest[37:]
	if strings.IndexByte(kind, '/') >= 0 {
		return uuid.Nil, "", false
	}
	id, err := uuid.Parse(rest[:36])
	if err != nil {
		return uuid.Nil, "", false
	}
	return id, kind, true
}

// IsCanonicalUUID reports whether s is a uuid as uuid.UUID.String writes it:
// lowercase hex, hyphenated, no braces or urn prefix. Devices use only this
// spelling, so that the uuid in the user name, the client id and the topics
// is one string.
func IsCanonicalUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// Truncate bounds what MQTT clients choose (topics, client ids, user names)
// before it reaches logs and errors.
func Truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
