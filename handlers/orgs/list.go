package orgs

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

// OrgList lists the caller's organisations; an API key sees its own.
func (h *Orgs) OrgList(ctx context.Context, req api.OrgListRequestObject) (api.OrgListResponseObject, error) {
	p := auth.AccessFrom(ctx).Principal
	q := db.New(h.Pool)
	if p.Kind == auth.KindAPIKey {
		o, err := q.OrgByID(ctx, p.KeyOrg)
		if err != nil {
			return nil, fmt.Errorf("load org %s: %w", p.KeyOrg, err)
		}
		return api.OrgList200JSONResponse{Items: []api.Org{org(o, p.KeyRole)}}, nil
	}
	afterT, afterID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	rows, err := q.OrgListForUser(ctx, db.OrgListForUserParams{UserID: p.UserID, AfterTime: afterT, AfterID: afterID, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list orgs of %s: %w", p.UserID, err)
	}
	items, next, err := pagination.Page(rows, limit, func(r db.OrgListForUserRow) (time.Time, uuid.UUID) { return r.CreatedAt, r.ID },
		pagination.Plain(func(r db.OrgListForUserRow) api.Org {
			return org(db.Org{ID: r.ID, Name: r.Name, Slug: r.Slug, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}, r.Role)
		}))
	if err != nil {
		return nil, err
	}
	return api.OrgList200JSONResponse{Items: items, NextCursor: next}, nil
}
