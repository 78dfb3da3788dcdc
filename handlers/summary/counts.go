package summary

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/rollout"
)

// The element types of the schemas' inline arrays, spelled as the
// generated code spells them (identical types, so they assign).
type (
	releaseCount = struct {
		Devices   int64      `json:"devices"`
		ReleaseId *uuid.UUID `json:"release_id,omitempty"`
	}
	statusCount = struct {
		Devices int64            `json:"devices"`
		Status  api.UpdateStatus `json:"status"`
	}
	groupSummary = struct {
		Counts api.RolloutCounts `json:"counts"`
		Index  int               `json:"index"`
	}
	rolloutSummary = struct {
		Groups    []groupSummary   `json:"groups"`
		RolloutId uuid.UUID        `json:"rollout_id"`
		State     api.RolloutState `json:"state"`
	}
)

// Connectivity values of device_summary (flock_device_connectivity).
const (
	connConnected    = "connected"
	connDisconnected = "disconnected"
	connNever        = "never"
)

// UpdateStatuses lists every update status in the order a summary shows
// them (flock_device_update_status decides a device's).
var UpdateStatuses = []api.UpdateStatus{api.UpdateStatusIdle, api.UpdateStatusUpdating, api.UpdateStatusFailed, api.UpdateStatusUnknown}

// tally is SummaryCounts while it is being added up.
type tally struct {
	devices, online, offline, never int64
	byRelease                       map[uuid.NullUUID]int64
	byStatus                        map[api.UpdateStatus]int64
}

func newTally() *tally {
	return &tally{byRelease: map[uuid.NullUUID]int64{}, byStatus: map[api.UpdateStatus]int64{}}
}

func (t *tally) add(connectivity string, release uuid.NullUUID, status api.UpdateStatus, n int64) {
	t.devices += n
	switch connectivity {
	case connConnected:
		t.online += n
	case connDisconnected:
		t.offline += n
	case connNever:
		t.never += n
	}
	t.byRelease[release] += n
	t.byStatus[status] += n
}

func (t *tally) addCounts(c api.SummaryCounts) {
	t.devices += c.Devices
	t.online += c.Online
	t.offline += c.Offline
	t.never += c.NeverConnected
	for _, r := range c.ByRelease {
		var id uuid.NullUUID
		if r.ReleaseId != nil {
			id = uuid.NullUUID{UUID: *r.ReleaseId, Valid: true}
		}
		t.byRelease[id] += r.Devices
	}
	for _, s := range c.ByUpdateStatus {
		t.byStatus[s.Status] += s.Devices
	}
}

// counts lists releases by most devices first (then by id, none reported
// last among equals, so the order is stable) and every update status.
func (t *tally) counts() api.SummaryCounts {
	out := api.SummaryCounts{Devices: t.devices, Online: t.online, Offline: t.offline, NeverConnected: t.never,
		ByRelease: []releaseCount{}, ByUpdateStatus: make([]statusCount, 0, len(UpdateStatuses))}
	releases := make([]uuid.NullUUID, 0, len(t.byRelease))
	for id, n := range t.byRelease {
		if n != 0 {
			releases = append(releases, id)
		}
	}
	slices.SortFunc(releases, func(a, b uuid.NullUUID) int {
		if c := cmp.Compare(t.byRelease[b], t.byRelease[a]); c != 0 {
			return c
		}
		if a.Valid != b.Valid {
			if a.Valid {
				return -1
			}
			return 1
		}
		return bytes.Compare(a.UUID[:], b.UUID[:])
	})
	for _, id := range releases {
		rc := releaseCount{Devices: t.byRelease[id]}
		if id.Valid {
			rc.ReleaseId = &id.UUID
		}
		out.ByRelease = append(out.ByRelease, rc)
	}
	for _, s := range UpdateStatuses {
		out.ByUpdateStatus = append(out.ByUpdateStatus, statusCount{Status: s, Devices: t.byStatus[s]})
	}
	return out
}

// Read returns the summaries of fleets, in the order given, from the
// counters q sees. Run it in a REPEATABLE READ transaction (the reads must
// see one moment). A fleet without devices has zero counts.
func Read(ctx context.Context, q *db.Queries, fleets []uuid.UUID) ([]api.FleetSummary, error) {
	out := make([]api.FleetSummary, len(fleets))
	if len(fleets) == 0 {
		return out, nil
	}
	rows, err := q.SummaryDeviceCounts(ctx, fleets)
	if err != nil {
		return nil, fmt.Errorf("count devices of %d fleets: %w", len(fleets), err)
	}
	tallies := make(map[uuid.UUID]*tally, len(fleets))
	for _, id := range fleets {
		tallies[id] = newTally()
	}
	for _, r := range rows {
		if t := tallies[r.FleetID]; t != nil {
			t.add(r.Connectivity, r.RunningReleaseID, api.UpdateStatus(r.UpdateStatus), r.Devices)
		}
	}
	rrows, err := q.SummaryRolloutCounts(ctx, fleets)
	if err != nil {
		return nil, fmt.Errorf("count rollout devices of %d fleets: %w", len(fleets), err)
	}
	// Rows come by fleet, rollout, group: each new rollout or group starts
	// where the previous one ends.
	rollouts := map[uuid.UUID][]rolloutSummary{}
	for _, r := range rrows {
		rs := rollouts[r.FleetID]
		if len(rs) == 0 || rs[len(rs)-1].RolloutId != r.RolloutID {
			rs = append(rs, rolloutSummary{RolloutId: r.RolloutID, State: api.RolloutState(r.RolloutState), Groups: []groupSummary{}})
		}
		last := &rs[len(rs)-1]
		if len(last.Groups) == 0 || last.Groups[len(last.Groups)-1].Index != int(r.GroupIdx) {
			last.Groups = append(last.Groups, groupSummary{Index: int(r.GroupIdx)})
		}
		if r.DeviceState != "" {
			addState(&last.Groups[len(last.Groups)-1].Counts, r.DeviceState, int(r.Devices))
		}
		rollouts[r.FleetID] = rs
	}
	for i, id := range fleets {
		out[i] = api.FleetSummary{FleetId: id, Counts: tallies[id].counts(), Rollouts: rollouts[id]}
		if out[i].Rollouts == nil {
			out[i].Rollouts = []rolloutSummary{}
		}
	}
	return out, nil
}

// Totals adds up fleets' counts.
func Totals(fleets []api.FleetSummary) api.SummaryCounts {
	t := newTally()
	for _, f := range fleets {
		t.addCounts(f.Counts)
	}
	return t.counts()
}

// addState counts n devices in a rollout device state; the states are
// internal/rollout's, the same as the rollout's own counts.
func addState(c *api.RolloutCounts, state string, n int) {
	c.Total += n
	switch state {
	case rollout.DevicePending:
		c.Pending += n
	case rollout.DeviceTargeted:
		c.Targeted += n
	case rollout.DeviceDownloading:
		c.Downloading += n
	case rollout.DeviceInstalling:
		c.Installing += n
	case rollout.DeviceWaitingLock:
		c.WaitingLock += n
	case rollout.DeviceRunning:
		c.Running += n
	case rollout.DeviceSucceeded:
		c.Succeeded += n
	case rollout.DeviceFailed:
		c.Failed += n
	case rollout.DeviceTimedOut:
		c.TimedOut += n
	case rollout.DeviceUnreached:
		c.Unreached += n
	case rollout.DeviceRolledBack:
		c.RolledBack += n
	}
}
