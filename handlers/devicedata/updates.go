package devicedata

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/internal/http/pagination"
	"github.com/flock-io/flock-api/internal/telemetry"
)

// DeviceUpdateEventList pages a device's update events newest first.
func (h *DeviceData) DeviceUpdateEventList(ctx context.Context, req api.DeviceUpdateEventListRequestObject) (api.DeviceUpdateEventListResponseObject, error) {
	p := req.Params
	since, until, err := timeRange(p.Since, p.Until)
	if err != nil {
		return nil, err
	}
	afterTS, afterID, err := pagination.Decode(p.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(p.Limit)
	if h.Telemetry == nil || nothingBefore(p.Until) {
		return api.DeviceUpdateEventList200JSONResponse{Items: []api.UpdateEvent{}}, nil
	}
	var after *telemetry.UpdateEventCursor
	if afterTS != nil {
		after = &telemetry.UpdateEventCursor{TS: *afterTS, ID: afterID.UUID}
	}
	rows, err := h.Telemetry.UpdateEvents(ctx, req.DeviceId, since, until, after, int(limit)+1)
	if err != nil {
		return nil, fmt.Errorf("list update events of device %s: %w", req.DeviceId, err)
	}
	items, next, err := pagination.Page(rows, limit,
		func(e telemetry.UpdateEvent) (time.Time, uuid.UUID) { return e.TS, e.ID },
		pagination.Plain(updateEvent))
	if err != nil {
		return nil, err
	}
	return api.DeviceUpdateEventList200JSONResponse{Items: items, NextCursor: next}, nil
}

func updateEvent(e telemetry.UpdateEvent) api.UpdateEvent {
	out := api.UpdateEvent{Id: e.ID, Ts: e.TS, ReceivedAt: e.ReceivedAt, Type: api.UpdateEventType(e.Type), Progress: e.Progress}
	if e.ReleaseID.Valid {
		out.ReleaseId = &e.ReleaseID.UUID
	}
	if e.Service != "" {
		out.Service = &e.Service
	}
	if e.Error != "" {
		out.Error = &e.Error
	}
	return out
}
