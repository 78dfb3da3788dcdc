package releases

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/http/pagination"
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
	items, next, err := pagination.Page(rows, limit, func(r db.Release) (time.Time, uuid.UUID) { return r.CreatedAt, r.ID }, Release)
	if err != nil {
		return nil, err
	}
	return api.ReleaseList200JSONResponse{Items: items, NextCursor: next}, nil
}
