package scheduler

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/rollout"
)

// Kinds of input.
const (
	kindReport     = "report"
	kindEvent      = "event"
	kindDisconnect = "disconnect"
)

// input is one device record as the rules need it.
type input struct {
	device uuid.UUID
	fleet  uuid.UUID
	kind   string
	at     time.Time // when the ingester received it (when it happened)

	report rollout.Report // kindReport

	event  string    // kindEvent: the update event's type
	about  uuid.UUID // the release it is about
	detail string
}

// Decode turns a batch's records into inputs, in order per device (by the
// time each happened: a device's records come from three topics, whose
// partitions are fetched independently). Records the scheduler has no use
// for (a connect) are left out; bad is the number that did not decode.
func Decode(recs []bus.Record) (ins []input, bad int) {
	ins = make([]input, 0, len(recs))
	for _, r := range recs {
		in, use, err := decode(r)
		switch {
		case err != nil:
			bad++
		case use:
			ins = append(ins, in)
		}
	}
	slices.SortStableFunc(ins, func(a, b input) int {
		if c := slices.Compare(a.device[:], b.device[:]); c != 0 {
			return c
		}
		return a.at.Compare(b.at)
	})
	return ins, bad
}

func decode(r bus.Record) (input, bool, error) {
	switch r.Topic {
	case bus.TopicDeviceState:
		var rec events.DeviceStateRecord
		if err := json.Unmarshal(r.Value, &rec); err != nil {
			return input{}, false, fmt.Errorf("decode state record: %w", err)
		}
		in, err := header(rec.DeviceId, rec.FleetId, rec.ReceivedAt)
		if err != nil || rec.State == nil {
			return input{}, false, fmt.Errorf("state record: %v", err)
		}
		in.kind = kindReport
		in.report = rollout.Report{Seq: int64(rec.State.Seq), Services: make([]rollout.ServiceReport, len(rec.State.Services))}
		if rec.State.RunningReleaseId != "" {
			if in.report.Release, err = uuid.Parse(rec.State.RunningReleaseId); err != nil {
				return input{}, false, fmt.Errorf("state record: running_release_id: %w", err)
			}
		}
		for i, sv := range rec.State.Services {
			status := ""
			if sv.Status != nil {
				status, _ = sv.Status.Value().(string)
			}
			in.report.Services[i] = rollout.ServiceReport{Name: sv.Name, Status: status, UpdateLock: sv.UpdateLocked}
		}
		return in, true, nil
	case bus.TopicDeviceEvents:
		var rec events.DeviceEventRecord
		if err := json.Unmarshal(r.Value, &rec); err != nil {
			return input{}, false, fmt.Errorf("decode event record: %w", err)
		}
		in, err := header(rec.DeviceId, rec.FleetId, rec.ReceivedAt)
		if err != nil || rec.Event == nil || rec.Event.ReservedType == nil {
			return input{}, false, fmt.Errorf("event record: %v", err)
		}
		in.kind = kindEvent
		in.event, _ = rec.Event.ReservedType.Value().(string)
		in.detail = rec.Event.Error
		if rec.Event.ReleaseId != "" {
			if in.about, err = uuid.Parse(rec.Event.ReleaseId); err != nil {
				return input{}, false, fmt.Errorf("event record: release_id: %w", err)
			}
		}
		return in, true, nil
	case bus.TopicDeviceConnectivity:
		var rec events.ConnectivityRecord
		if err := json.Unmarshal(r.Value, &rec); err != nil {
			return input{}, false, fmt.Errorf("decode connectivity record: %w", err)
		}
		in, err := header(rec.DeviceId, rec.FleetId, rec.At)
		if err != nil || rec.Event == nil {
			return input{}, false, fmt.Errorf("connectivity record: %v", err)
		}
		if *rec.Event != events.ConnectivityEventDisconnected {
			return input{}, false, nil
		}
		in.kind = kindDisconnect
		return in, true, nil
	}
	return input{}, false, nil
}

func header(device, fleet, at string) (input, error) {
	var in input
	var err error
	if in.device, err = uuid.Parse(device); err != nil {
		return in, fmt.Errorf("device_id: %w", err)
	}
	if in.fleet, err = uuid.Parse(fleet); err != nil {
		return in, fmt.Errorf("fleet_id: %w", err)
	}
	if in.at, err = time.Parse(time.RFC3339Nano, at); err != nil {
		return in, fmt.Errorf("time: %w", err)
	}
	return in, nil
}
