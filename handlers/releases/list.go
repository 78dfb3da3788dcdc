package releases

import (
	"context"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/pagination"
)

// ReleaseList lists a fleet's releases, newest first.
func (h *Releases) ReleaseList(ctx context.Context, req api.ReleaseListRequestObject) (api.ReleaseListResponseObject, error) {
	beforeT, beforeID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	var status *string
	if req.Params.Status != nil {
		s := string(*req.Params.Status)
		status = &s
	}
	rows, err := db.New(h.Pool).ReleaseList(ctx, db.ReleaseListParams{FleetID: req.FleetId, Status: status,
		BeforeTime: beforeT, BeforeID: beforeID, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list releases of %s: %w", req.FleetId, err)
	}
	page := api.ReleaseList200JSONResponse{Items: make([]api.Release, 0, len(rows))}
	if len(rows) > int(limit) {
		rows = rows[:limit]
		last := rows[len(rows)-1]
		next := pagination.Encode(last.CreatedAt, last.ID)
		page.NextCursor = &next
	}
	for _, r := range rows {
		rel, err := Release(r)
		if err != nil {
			return nil, err
		}
		page.Items = append(page.Items, rel)
	}
	return page, nil
}
