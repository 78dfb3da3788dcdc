package identity

import (
	"context"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
)

// MeGet returns the caller with their memberships.
func (h *Identity) MeGet(ctx context.Context, _ api.MeGetRequestObject) (api.MeGetResponseObject, error) {
	p := auth.AccessFrom(ctx).Principal
	q := db.New(h.Pool)
	u, err := q.UserByID(ctx, p.UserID)
	if err != nil {
		return nil, fmt.Errorf("load user %s: %w", p.UserID, err)
	}
	rows, err := q.MembershipsOfUser(ctx, u.ID)
	if err != nil {
		return nil, fmt.Errorf("load memberships of %s: %w", u.ID, err)
	}
	me := api.MeGet200JSONResponse{User: User(u)}
	me.Memberships = make([]api.Membership, len(rows))
	for i, m := range rows {
		me.Memberships[i] = api.Membership{OrgId: m.OrgID, OrgName: m.OrgName, Role: api.Role(m.Role)}
	}
	return me, nil
}
