package members

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
	items, next, err := pagination.Page(rows, limit, func(r db.MemberListRow) (time.Time, uuid.UUID) { return r.JoinedAt, r.ID },
		pagination.Plain(func(r db.MemberListRow) api.Member { return fromRow(db.MemberGetRow(r)) }))
	if err != nil {
		return nil, err
	}
	return api.MemberList200JSONResponse{Items: items, NextCursor: next}, nil
}
