package members

import (
	"context"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/pagination"
)

// MemberList lists an organisation's members, oldest first.
func (h *Members) MemberList(ctx context.Context, req api.MemberListRequestObject) (api.MemberListResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	afterT, afterID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	rows, err := db.New(h.Pool).MemberList(ctx, db.MemberListParams{OrgID: acc.OrgID, AfterTime: afterT, AfterID: afterID, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list members of %s: %w", acc.OrgID, err)
	}
	page := api.MemberList200JSONResponse{Items: make([]api.Member, 0, len(rows))}
	if len(rows) > int(limit) {
		rows = rows[:limit]
		last := rows[len(rows)-1]
		next := pagination.Encode(last.JoinedAt, last.ID)
		page.NextCursor = &next
	}
	for _, r := range rows {
		page.Items = append(page.Items, fromRow(db.MemberGetRow(r)))
	}
	return page, nil
}
