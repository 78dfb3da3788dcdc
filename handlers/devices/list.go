package devices

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/pagination"
)

func nullable(id *uuid.UUID) uuid.NullUUID {
	if id == nil {
		return uuid.NullUUID{}
	}
	return uuid.NullUUID{UUID: *id, Valid: true}
}

// DeviceList lists an organisation's devices, oldest first, filtered.
func (h *Devices) DeviceList(ctx context.Context, req api.DeviceListRequestObject) (api.DeviceListResponseObject, error) {
	page, err := h.list(ctx, auth.AccessFrom(ctx).OrgID, req.Params)
	if err != nil {
		return nil, err
	}
	return page, nil
}

// list is DeviceList in org, whoever asks (the guard has decided that).
func (h *Devices) list(ctx context.Context, org uuid.UUID, p api.DeviceListParams) (deviceListPage, error) {
	afterT, afterID, err := pagination.Decode(p.Cursor)
	if err != nil {
		return deviceListPage{}, err
	}
	limit := pagination.Limit(p.Limit)
	tagValue := p.TagValue
	if p.TagKey == nil {
		tagValue = nil
	}
	rows, err := db.New(h.Pool).DeviceList(ctx, db.DeviceListParams{
		OrgID: org, FleetID: nullable(p.FleetId), TagKey: p.TagKey, TagValue: tagValue, Online: p.Online,
		RunningReleaseID: nullable(p.RunningReleaseId), NamePrefix: p.NamePrefix, DeviceGroupID: nullable(p.DeviceGroupId),
		AfterTime: afterT, AfterID: afterID, MaxRows: limit + 1,
	})
	if err != nil {
		return deviceListPage{}, fmt.Errorf("list devices of %s: %w", org, err)
	}
	page := rows[:min(len(rows), int(limit))]
	// One KV round trip for the page's live states.
	ids := make([]uuid.UUID, len(page))
	for i := range page {
		ids[i] = page[i].ID
	}
	live := h.liveStates(ctx, ids)
	var next *string
	if len(rows) > len(page) {
		// As pagination.Page does: the extra row says that a next page
		// exists, and it starts after this page's last device.
		last := &page[len(page)-1]
		c := pagination.Encode(last.CreatedAt, last.ID)
		next = &c
	}
	return encodeDeviceList(page, live, next, time.Now(), h.PublicURL)
}
