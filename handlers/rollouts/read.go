package rollouts

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/http/pagination"
	"github.com/flock-io/flock-api/internal/rollout"
)

// RolloutGet returns a rollout with its groups and its devices counted by
// group and state, as they are now.
func (h *Rollouts) RolloutGet(ctx context.Context, req api.RolloutGetRequestObject) (api.RolloutGetResponseObject, error) {
	q := db.New(h.Pool)
	r, err := q.RolloutGet(ctx, req.RolloutId)
	if err != nil {
		return nil, fmt.Errorf("load rollout %s: %w", req.RolloutId, err)
	}
	out, err := load(ctx, q, r)
	if err != nil {
		return nil, err
	}
	return api.RolloutGet200JSONResponse(out), nil
}

// RolloutList lists a fleet's rollouts, newest first; a page's groups and
// counts are read in two queries, not two per rollout.
func (h *Rollouts) RolloutList(ctx context.Context, req api.RolloutListRequestObject) (api.RolloutListResponseObject, error) {
	beforeT, beforeID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	var state *string
	if req.Params.State != nil {
		s := string(*req.Params.State)
		state = &s
	}
	q := db.New(h.Pool)
	rows, err := q.RolloutList(ctx, db.RolloutListParams{FleetID: req.FleetId, State: state,
		BeforeTime: beforeT, BeforeID: beforeID, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list rollouts of fleet %s: %w", req.FleetId, err)
	}
	ids := make([]uuid.UUID, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	groupRows, err := q.RolloutGroupsOf(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("load groups of rollouts: %w", err)
	}
	groups := map[uuid.UUID][]db.RolloutGroup{}
	for _, g := range groupRows {
		groups[g.RolloutID] = append(groups[g.RolloutID], g)
	}
	countRows, err := q.RolloutCountsOf(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("count devices of rollouts: %w", err)
	}
	byRollout := map[uuid.UUID]counts{}
	for _, c := range countRows {
		if byRollout[c.RolloutID] == nil {
			byRollout[c.RolloutID] = counts{}
		}
		if byRollout[c.RolloutID][c.GroupIdx] == nil {
			byRollout[c.RolloutID][c.GroupIdx] = rollout.Counts{}
		}
		byRollout[c.RolloutID][c.GroupIdx][c.State] = int(c.N)
	}
	items, next, err := pagination.Page(rows, limit, func(r db.Rollout) (time.Time, uuid.UUID) { return r.CreatedAt, r.ID },
		func(r db.Rollout) (api.Rollout, error) { return convert(r, groups[r.ID], byRollout[r.ID]) })
	if err != nil {
		return nil, err
	}
	return api.RolloutList200JSONResponse{Items: items, NextCursor: next}, nil
}

// RolloutDeviceList lists a rollout's devices by device id, filtered by
// state and group.
func (h *Rollouts) RolloutDeviceList(ctx context.Context, req api.RolloutDeviceListRequestObject) (api.RolloutDeviceListResponseObject, error) {
	p := req.Params
	after := uuid.NullUUID{}
	parts, err := pagination.DecodeText(p.Cursor, 1)
	if err != nil {
		return nil, err
	}
	if parts != nil {
		id, err := uuid.Parse(parts[0])
		if err != nil {
			return nil, pagination.BadCursor(*p.Cursor)
		}
		after = uuid.NullUUID{UUID: id, Valid: true}
	}
	limit := pagination.Limit(p.Limit)
	var state *string
	if p.State != nil {
		s := string(*p.State)
		state = &s
	}
	var group *int32
	if p.Group != nil {
		g := int32(*p.Group)
		group = &g
	}
	rows, err := db.New(h.Pool).RolloutDeviceList(ctx, db.RolloutDeviceListParams{RolloutID: req.RolloutId, State: state,
		GroupIdx: group, AfterID: after, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list devices of rollout %s: %w", req.RolloutId, err)
	}
	out := api.RolloutDevicePage{Items: []api.RolloutDevice{}}
	for i, d := range rows {
		if i == int(limit) {
			c := pagination.EncodeText(rows[i-1].DeviceID.String())
			out.NextCursor = &c
			break
		}
		rd := api.RolloutDevice{DeviceId: d.DeviceID, Group: int(d.GroupIdx), State: api.RolloutDeviceState(d.State),
			Reason: d.Reason, StateAt: d.StateAt, TargetedAt: d.TargetedAt, Deadline: d.Deadline}
		if d.PreviousReleaseID.Valid {
			rd.PreviousReleaseId = &d.PreviousReleaseID.UUID
		}
		out.Items = append(out.Items, rd)
	}
	return api.RolloutDeviceList200JSONResponse(out), nil
}
