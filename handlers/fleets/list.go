package fleets

import (
	"context"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/pagination"
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
	page := api.FleetList200JSONResponse{Items: make([]api.Fleet, 0, len(rows))}
	if len(rows) > int(limit) {
		rows = rows[:limit]
		last := rows[len(rows)-1]
		next := pagination.Encode(last.CreatedAt, last.ID)
		page.NextCursor = &next
	}
	for _, f := range rows {
		page.Items = append(page.Items, Fleet(f))
	}
	return page, nil
}
