// Package rollouts serves rollouts: a final release taken through a fleet's
// devices group by group. It validates and prepares them and carries out
// people's actions; workers/scheduler moves them on as devices report.
package rollouts

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers/fleets"
	"github.com/flock-io/flock-api/internal/rollout"
	"github.com/flock-io/flock-api/internal/rolloutstore"
	"github.com/flock-io/flock-api/workers/nudger"
)

// Rollouts implements the rollout operations.
type Rollouts struct {
	Pool *pgxpool.Pool
	// Nudge hears of devices whose target changed (a rollback); nil: none.
	Nudge nudger.Notifier
}

// selector is rollouts.selector.
type selector struct {
	Tags map[string]string `json:"tags,omitempty"`
}

// counts are a rollout's devices by group and state.
type counts map[int32]rollout.Counts

func loadCounts(ctx context.Context, q *db.Queries, id uuid.UUID) (counts, error) {
	rows, err := q.RolloutCounts(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("count devices of rollout %s: %w", id, err)
	}
	c := counts{}
	for _, r := range rows {
		if c[r.GroupIdx] == nil {
			c[r.GroupIdx] = rollout.Counts{}
		}
		c[r.GroupIdx][r.State] = int(r.N)
	}
	return c, nil
}

func apiCounts(cs ...rollout.Counts) api.RolloutCounts {
	var out api.RolloutCounts
	for _, c := range cs {
		for state, n := range c {
			out.Total += n
			switch state {
			case rollout.DevicePending:
				out.Pending += n
			case rollout.DeviceTargeted:
				out.Targeted += n
			case rollout.DeviceDownloading:
				out.Downloading += n
			case rollout.DeviceInstalling:
				out.Installing += n
			case rollout.DeviceWaitingLock:
				out.WaitingLock += n
			case rollout.DeviceRunning:
				out.Running += n
			case rollout.DeviceSucceeded:
				out.Succeeded += n
			case rollout.DeviceFailed:
				out.Failed += n
			case rollout.DeviceTimedOut:
				out.TimedOut += n
			case rollout.DeviceUnreached:
				out.Unreached += n
			case rollout.DeviceRolledBack:
				out.RolledBack += n
			}
		}
	}
	return out
}

// load reads a rollout with its groups and counts, for a response.
func load(ctx context.Context, q *db.Queries, r db.Rollout) (api.Rollout, error) {
	groups, err := q.RolloutGroups(ctx, r.ID)
	if err != nil {
		return api.Rollout{}, fmt.Errorf("load groups of rollout %s: %w", r.ID, err)
	}
	c, err := loadCounts(ctx, q, r.ID)
	if err != nil {
		return api.Rollout{}, err
	}
	return convert(r, groups, c)
}

func convert(r db.Rollout, groups []db.RolloutGroup, c counts) (api.Rollout, error) {
	spec, err := rolloutstore.Spec(r)
	if err != nil {
		return api.Rollout{}, err
	}
	var sel selector
	if err := json.Unmarshal(r.Selector, &sel); err != nil {
		return api.Rollout{}, fmt.Errorf("decode selector of rollout %s: %w", r.ID, err)
	}
	out := api.Rollout{Id: r.ID, OrgId: r.OrgID, FleetId: r.FleetID, ReleaseId: r.ReleaseID,
		State: api.RolloutState(r.State), StateReason: r.StateReason, Membership: api.RolloutMembership(r.Membership),
		Tags: orEmpty(sel.Tags), CurrentGroup: int(r.CurrentGroup), RatePerMinute: spec.RatePerMinute,
		SettleSeconds: spec.SettleSeconds, RollbackOnAbort: spec.RollbackOnAbort, Groups: []api.RolloutGroup{},
		CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt, StartedAt: r.StartedAt, EndedAt: r.EndedAt}
	if r.FromReleaseID.Valid {
		out.FromReleaseId = &r.FromReleaseID.UUID
	}
	if r.DeviceGroupID.Valid {
		out.DeviceGroupId = &r.DeviceGroupID.UUID
	}
	if rp := spec.Ramp; rp != nil {
		out.Ramp = &api.RolloutRamp{IncrementFactor: rp.Factor, EverySucceeded: rp.EverySucceeded}
		if rp.MaxPerMinute > 0 {
			out.Ramp.MaxPerMinute = &rp.MaxPerMinute
		}
	}
	if w := spec.Window; w != nil {
		out.MaintenanceWindow = fleets.APIWindowOf(*w)
	}
	all := make([]rollout.Counts, 0, len(groups))
	for _, g := range groups {
		gs, err := rolloutstore.GroupSpec(g)
		if err != nil {
			return api.Rollout{}, err
		}
		all = append(all, c[g.Idx])
		out.Groups = append(out.Groups, api.RolloutGroup{Index: int(g.Idx), Name: g.Name, Spec: apiGroupSpec(gs),
			State: api.RolloutGroupState(g.State), Counts: apiCounts(c[g.Idx]), StartedAt: g.StartedAt, EndedAt: g.EndedAt})
	}
	out.Counts = apiCounts(all...)
	return out, nil
}

func apiGroupSpec(g rollout.GroupSpec) api.RolloutGroupSpec {
	out := api.RolloutGroupSpec{Name: &g.Name, Percent: g.Percent, Count: g.Count,
		SuccessThreshold: &g.SuccessThreshold, DeviceTimeoutSeconds: &g.DeviceTimeoutSeconds,
		SoakSeconds: &g.SoakSeconds, RequiresApproval: &g.RequiresApproval}
	if len(g.Tags) > 0 {
		t := api.Tags(g.Tags)
		out.Tags = &t
	}
	if t := g.ErrorThreshold; t != nil {
		et := api.RolloutErrorThreshold{Percent: t.Percent, MinSample: t.MinSample, Action: api.RolloutErrorThresholdAction(t.Action)}
		if len(t.FailureTypes) > 0 {
			fts := make([]api.RolloutErrorThresholdFailureTypes, len(t.FailureTypes))
			for i, ft := range t.FailureTypes {
				fts[i] = api.RolloutErrorThresholdFailureTypes(ft)
			}
			et.FailureTypes = &fts
		}
		out.ErrorThreshold = &et
	}
	return out
}

func orEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// tagsJSON is a tag filter as the candidate queries take it (jsonb @>).
func tagsJSON(t map[string]string) []byte {
	b, _ := json.Marshal(orEmpty(t)) // a map of strings always encodes
	return b
}
