// Package devicegroups serves device groups: saved device filters (tags,
// a name prefix, device ids; every condition given must hold) that
// rollouts and the device list target.
package devicegroups

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/pagination"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/tags"
)

// DeviceGroups implements the device group operations.
type DeviceGroups struct {
	Pool *pgxpool.Pool
}

func convert(g db.DeviceGroup) api.DeviceGroup {
	out := api.DeviceGroup{Id: g.ID, OrgId: g.OrgID, Name: g.Name, Tags: g.Tags, NamePrefix: g.NamePrefix,
		DeviceIds: g.DeviceIds, CreatedAt: g.CreatedAt, UpdatedAt: g.UpdatedAt}
	if out.Tags == nil {
		out.Tags = map[string]string{}
	}
	if out.DeviceIds == nil {
		out.DeviceIds = []uuid.UUID{}
	}
	return out
}

func nameTaken(name string) error {
	return problem.Errorf(http.StatusConflict, "name_taken", "the organisation already has a device group named %q", name)
}

// DeviceGroupCreate saves a filter.
func (h *DeviceGroups) DeviceGroupCreate(ctx context.Context, req api.DeviceGroupCreateRequestObject) (api.DeviceGroupCreateResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	b := req.Body
	t, err := tags.Check((*map[string]string)(b.Tags))
	if err != nil {
		return nil, err
	}
	var ids []uuid.UUID
	if b.DeviceIds != nil {
		ids = *b.DeviceIds
	}
	name := strings.TrimSpace(b.Name)
	g, err := postgres.Queries(ctx, h.Pool).DeviceGroupCreate(ctx, db.DeviceGroupCreateParams{OrgID: acc.OrgID, Name: name,
		Tags: t, NamePrefix: b.NamePrefix, DeviceIds: ids})
	if postgres.IsUniqueViolation(err) {
		return nil, nameTaken(name)
	}
	if err != nil {
		return nil, fmt.Errorf("create device group in %s: %w", acc.OrgID, err)
	}
	acc.SetTarget(g.ID.String())
	return api.DeviceGroupCreate201JSONResponse(convert(g)), nil
}

// DeviceGroupGet returns a device group.
func (h *DeviceGroups) DeviceGroupGet(ctx context.Context, req api.DeviceGroupGetRequestObject) (api.DeviceGroupGetResponseObject, error) {
	g, err := db.New(h.Pool).DeviceGroupGet(ctx, req.DeviceGroupId)
	if err != nil {
		return nil, fmt.Errorf("load device group %s: %w", req.DeviceGroupId, err)
	}
	return api.DeviceGroupGet200JSONResponse(convert(g)), nil
}

// DeviceGroupList lists an organisation's device groups, oldest first.
func (h *DeviceGroups) DeviceGroupList(ctx context.Context, req api.DeviceGroupListRequestObject) (api.DeviceGroupListResponseObject, error) {
	afterT, afterID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	org := auth.AccessFrom(ctx).OrgID
	rows, err := db.New(h.Pool).DeviceGroupList(ctx, db.DeviceGroupListParams{OrgID: org, AfterTime: afterT, AfterID: afterID, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list device groups of %s: %w", org, err)
	}
	items, next, err := pagination.Page(rows, limit, func(g db.DeviceGroup) (time.Time, uuid.UUID) { return g.CreatedAt, g.ID }, pagination.Plain(convert))
	if err != nil {
		return nil, err
	}
	return api.DeviceGroupList200JSONResponse{Items: items, NextCursor: next}, nil
}

// DeviceGroupUpdate changes a group's name or conditions; an empty name
// prefix or device id list clears that condition. A continuous rollout
// that targets the group sees the new filter from then on.
func (h *DeviceGroups) DeviceGroupUpdate(ctx context.Context, req api.DeviceGroupUpdateRequestObject) (api.DeviceGroupUpdateResponseObject, error) {
	q := postgres.Queries(ctx, h.Pool)
	g, err := q.DeviceGroupForUpdate(ctx, req.DeviceGroupId)
	if err != nil {
		return nil, fmt.Errorf("load device group %s: %w", req.DeviceGroupId, err)
	}
	b := req.Body
	if b.Name != nil {
		g.Name = strings.TrimSpace(*b.Name)
	}
	if b.Tags != nil {
		if g.Tags, err = tags.Check((*map[string]string)(b.Tags)); err != nil {
			return nil, err
		}
	}
	if b.NamePrefix != nil {
		g.NamePrefix = b.NamePrefix
		if *b.NamePrefix == "" {
			g.NamePrefix = nil
		}
	}
	if b.DeviceIds != nil {
		g.DeviceIds = *b.DeviceIds
		if len(g.DeviceIds) == 0 {
			g.DeviceIds = nil
		}
	}
	g, err = q.DeviceGroupUpdate(ctx, db.DeviceGroupUpdateParams{ID: g.ID, Name: g.Name, Tags: g.Tags, NamePrefix: g.NamePrefix, DeviceIds: g.DeviceIds})
	if postgres.IsUniqueViolation(err) {
		return nil, nameTaken(g.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("update device group %s: %w", req.DeviceGroupId, err)
	}
	return api.DeviceGroupUpdate200JSONResponse(convert(g)), nil
}

// DeviceGroupDelete deletes a group no rollout that has not ended targets.
func (h *DeviceGroups) DeviceGroupDelete(ctx context.Context, req api.DeviceGroupDeleteRequestObject) (api.DeviceGroupDeleteResponseObject, error) {
	q := postgres.Queries(ctx, h.Pool)
	if _, err := q.DeviceGroupForUpdate(ctx, req.DeviceGroupId); err != nil {
		return nil, fmt.Errorf("lock device group %s: %w", req.DeviceGroupId, err)
	}
	inUse, err := q.DeviceGroupInUse(ctx, uuid.NullUUID{UUID: req.DeviceGroupId, Valid: true})
	if err != nil {
		return nil, fmt.Errorf("check rollouts of device group %s: %w", req.DeviceGroupId, err)
	}
	if inUse {
		return nil, problem.Errorf(http.StatusConflict, "in_use", "a rollout that has not ended targets device group %s", req.DeviceGroupId)
	}
	if _, err := q.DeviceGroupDelete(ctx, req.DeviceGroupId); err != nil {
		return nil, fmt.Errorf("delete device group %s: %w", req.DeviceGroupId, err)
	}
	return api.DeviceGroupDelete204Response{}, nil
}
