package ingester

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/asyncapi"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/devicetopic"
)

// Reasons a message is dropped, for flock_ingest_dropped_total. A fixed set,
// so devices cannot grow the label space.
const (
	dropTopic      = "topic"
	dropTooLarge   = "too_large"
	dropMalformed  = "malformed_json"
	dropSchema     = "schema"
	dropUnknown    = "unknown_device"
	dropBadContent = "bad_content"
)

var dropReasons = []string{dropTopic, dropTooLarge, dropMalformed, dropSchema, dropUnknown, dropBadContent}

// item is one accepted message, decoded, waiting for its batch.
type item struct {
	device uuid.UUID
	kind   string
	at     time.Time
	raw    []byte

	state     reportedState
	samples   []events.TelemetrySample
	logs      []events.LogEntry
	status    *events.ConnectionStatus
	statusSeq int64
	update    updateEvent
	result    commandResult
}

// decode checks the topic, the size and the schema, and decodes.
func (w *worker) decode(m received) (item, string, error) {
	device, kind, ok := parseTopic(m.pub.Topic)
	if !ok {
		return item{}, dropTopic, errors.New("not a device topic")
	}
	it := item{device: device, kind: kind, at: m.at, raw: m.pub.Payload}
	if len(m.pub.Payload) > w.in.cfg.MaxPayload {
		return it, dropTooLarge, fmt.Errorf("payload of %d bytes is over %d", len(m.pub.Payload), w.in.cfg.MaxPayload)
	}
	doc, err := w.in.deps.Validator.Decode(kind, m.pub.Payload)
	if err != nil {
		var pe *asyncapi.PayloadError
		if errors.As(err, &pe) && pe.Malformed {
			return it, dropMalformed, err
		}
		return it, dropSchema, err
	}
	switch kind {
	case devicetopic.State:
		it.state, err = readReportedState(doc)
	case devicetopic.Telemetry:
		it.samples, err = telemetrySamples(doc)
	case devicetopic.Logs:
		it.logs, err = logEntries(doc)
	case devicetopic.Events:
		it.update, err = readUpdateEvent(doc)
	case devicetopic.Status:
		it.status, err = connectionStatus(doc)
		if err == nil {
			it.statusSeq = int64(it.status.ConnectionSeq)
		}
	case devicetopic.CommandResults:
		it.result, err = readCommandResult(doc)
	}
	if err != nil {
		// The schema passed, so this is a value Go cannot hold (a sequence
		// beyond int64, say).
		return it, dropBadContent, err
	}
	return it, "", nil
}

// parseTopic splits flock/v1/devices/<uuid>/<kind>, for the kinds a device
// publishes.
func parseTopic(topic string) (uuid.UUID, string, bool) {
	device, kind, ok := devicetopic.Parse(topic)
	if !ok {
		return uuid.Nil, "", false
	}
	if !devicetopic.IsFromDevice(kind) {
		return uuid.Nil, "", false
	}
	return device, kind, true
}
