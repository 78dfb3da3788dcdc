package orgs

import (
	"context"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"strings"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
)

// OrgCreate creates an organisation with the caller as its owner.
func (h *Orgs) OrgCreate(ctx context.Context, req api.OrgCreateRequestObject) (api.OrgCreateResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	q := postgres.Queries(ctx, h.Pool)
	o, err := q.OrgCreate(ctx, strings.TrimSpace(req.Body.Name))
	if err != nil {
		return nil, fmt.Errorf("create org: %w", err)
	}
	if _, err := q.MembershipCreate(ctx, db.MembershipCreateParams{OrgID: o.ID, UserID: acc.Principal.UserID, Role: db.OrgRoleOwner}); err != nil {
		return nil, fmt.Errorf("make %s owner of %s: %w", acc.Principal.UserID, o.ID, err)
	}
	acc.SetOrg(o.ID)
	acc.SetTarget(o.ID.String())
	return api.OrgCreate201JSONResponse(org(o, db.OrgRoleOwner)), nil
}
