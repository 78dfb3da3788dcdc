package ingester

import (
	"encoding/json"
	"fmt"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/events"
)

// The ingester reads a payload's values from the document the schema check
// returns (asyncapi.Validator.Decode) instead of parsing the payload again:
// that second parse was a third of the ingester's decoding time. The schema
// has already fixed every shape read here, so a mismatch means a value Go
// cannot hold (a sequence beyond int64, an integer written as 1.0), which
// the caller drops as bad content.

func object(v any) (map[string]any, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("want an object, got %T", v)
	}
	return m, nil
}

func list(m map[string]any, key string) ([]any, error) {
	v, ok := m[key].([]any)
	if !ok && m[key] != nil {
		return nil, fmt.Errorf("%s: want an array, got %T", key, m[key])
	}
	return v, nil
}

func text(m map[string]any, key string) string {
	s, _ := m[key].(string)
	return s
}

func integer(m map[string]any, key string) (int64, error) {
	n, ok := m[key].(json.Number)
	if !ok {
		return 0, fmt.Errorf("%s: want a number, got %T", key, m[key])
	}
	i, err := n.Int64()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return i, nil
}

func float(m map[string]any, key string) (float64, error) {
	n, ok := m[key].(json.Number)
	if !ok {
		return 0, fmt.Errorf("%s: want a number, got %T", key, m[key])
	}
	f, err := n.Float64()
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return f, nil
}

// commandResult is a device's answer about one of its commands.
type commandResult struct {
	id     uuid.UUID
	status string
	err    string
}

func readCommandResult(doc any) (commandResult, error) {
	m, err := object(doc)
	if err != nil {
		return commandResult{}, err
	}
	id, err := uuid.Parse(text(m, "id"))
	if err != nil {
		return commandResult{}, fmt.Errorf("id: %w", err)
	}
	return commandResult{id: id, status: text(m, "status"), err: text(m, "error")}, nil
}

// reportedState is what the ingester reads of a ReportedState: its seq,
// which orders it, and what PostgreSQL keeps in columns for the device
// list's filters. The state itself is stored and forwarded as the device
// sent it.
type reportedState struct {
	seq          int64
	release      string // "" when the device runs none
	osVersion    string
	agentVersion string
}

func readReportedState(doc any) (reportedState, error) {
	m, err := object(doc)
	if err != nil {
		return reportedState{}, err
	}
	seq, err := integer(m, "seq")
	if err != nil {
		return reportedState{}, err
	}
	return reportedState{seq: seq, release: text(m, "running_release_id"),
		osVersion: text(m, "os_version"), agentVersion: text(m, "agent_version")}, nil
}

func telemetrySamples(doc any) ([]events.TelemetrySample, error) {
	m, err := object(doc)
	if err != nil {
		return nil, err
	}
	raw, err := list(m, "samples")
	if err != nil {
		return nil, err
	}
	out := make([]events.TelemetrySample, 0, len(raw))
	for i, r := range raw {
		sm, err := object(r)
		if err != nil {
			return nil, fmt.Errorf("samples/%d: %w", i, err)
		}
		value, err := float(sm, "value")
		if err != nil {
			return nil, fmt.Errorf("samples/%d: %w", i, err)
		}
		s := events.TelemetrySample{Ts: text(sm, "ts"), Name: text(sm, "name"), Value: value, Unit: text(sm, "unit")}
		if labels, ok := sm["labels"].(map[string]any); ok {
			s.Labels = make(map[string]string, len(labels))
			for k, v := range labels {
				s.Labels[k], _ = v.(string)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

func logEntries(doc any) ([]events.LogEntry, error) {
	m, err := object(doc)
	if err != nil {
		return nil, err
	}
	raw, err := list(m, "entries")
	if err != nil {
		return nil, err
	}
	out := make([]events.LogEntry, 0, len(raw))
	for i, r := range raw {
		em, err := object(r)
		if err != nil {
			return nil, fmt.Errorf("entries/%d: %w", i, err)
		}
		seq, err := integer(em, "seq")
		if err != nil {
			return nil, fmt.Errorf("entries/%d: %w", i, err)
		}
		e := events.LogEntry{Service: text(em, "service"), Seq: int(seq), Ts: text(em, "ts"), Line: text(em, "line")}
		if s, ok := em["stream"].(string); ok {
			stream, known := events.ValuesToLogStream[s]
			if !known {
				return nil, fmt.Errorf("entries/%d: stream %q", i, s)
			}
			e.Stream = &stream
		}
		out = append(out, e)
	}
	return out, nil
}

func connectionStatus(doc any) (*events.ConnectionStatus, error) {
	m, err := object(doc)
	if err != nil {
		return nil, err
	}
	seq, err := integer(m, "connection_seq")
	if err != nil {
		return nil, err
	}
	st := &events.ConnectionStatus{ConnectionSeq: int(seq)}
	if s, ok := m["state"].(string); ok {
		state, known := events.ValuesToConnectionState[s]
		if !known {
			return nil, fmt.Errorf("state %q", s)
		}
		st.State = &state
	}
	return st, nil
}
