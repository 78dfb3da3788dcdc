package fleets

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

// FleetList lists an organisation's fleets, oldest first.
func (h *Fleets) FleetList(ctx context.Context, req api.FleetListRequestObject) (api.FleetListResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	afterT, afterID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	rows, err := db.New(h.Pool).FleetList(ctx, db.FleetListParams{OrgID: acc.OrgID, AfterTime: afterT, AfterID: afterID, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list fleets of %s: %w", acc.OrgID, err)
	}
	items, next, err := pagination.Page(rows, limit, func(f db.Fleet) (time.Time, uuid.UUID) { return f.CreatedAt, f.ID },
		Fleet)
	if err != nil {
		return nil, err
	}
	return api.FleetList200JSONResponse{Items: items, NextCursor: next}, nil
}
