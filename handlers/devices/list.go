package devices

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/pagination"
)

func nullable(id *uuid.UUID) uuid.NullUUID {
	if id == nil {
		return uuid.NullUUID{}
	}
	return uuid.NullUUID{UUID: *id, Valid: true}
}

// DeviceList lists an organisation's devices, oldest first, filtered.
func (h *Devices) DeviceList(ctx context.Context, req api.DeviceListRequestObject) (api.DeviceListResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	p := req.Params
	afterT, afterID, err := pagination.Decode(p.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(p.Limit)
	tagValue := p.TagValue
	if p.TagKey == nil {
		tagValue = nil
	}
	rows, err := db.New(h.Pool).DeviceList(ctx, db.DeviceListParams{
		OrgID: acc.OrgID, FleetID: nullable(p.FleetId), TagKey: p.TagKey, TagValue: tagValue, Online: p.Online,
		RunningReleaseID: nullable(p.RunningReleaseId), NamePrefix: p.NamePrefix,
		AfterTime: afterT, AfterID: afterID, MaxRows: limit + 1,
	})
	if err != nil {
		return nil, fmt.Errorf("list devices of %s: %w", acc.OrgID, err)
	}
	// One KV round trip for the page's live states.
	ids := make([]uuid.UUID, 0, len(rows))
	for _, d := range rows[:min(len(rows), int(limit))] {
		ids = append(ids, d.ID)
	}
	live := h.liveStates(ctx, ids)
	items, next, err := pagination.Page(rows, limit, func(d db.Device) (time.Time, uuid.UUID) { return d.CreatedAt, d.ID },
		func(d db.Device) (api.Device, error) { return withLive(d, live[d.ID]) })
	if err != nil {
		return nil, err
	}
	return api.DeviceList200JSONResponse{Items: items, NextCursor: next}, nil
}
