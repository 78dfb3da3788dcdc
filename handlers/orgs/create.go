package orgs

import (
	"context"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"net/http"
	"strings"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// OrgCreate creates an organisation with the caller as its owner.
func (h *Orgs) OrgCreate(ctx context.Context, req api.OrgCreateRequestObject) (api.OrgCreateResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	q := postgres.Queries(ctx, h.Pool)
	o, err := q.OrgCreate(ctx, db.OrgCreateParams{Name: strings.TrimSpace(req.Body.Name), Slug: req.Body.Slug})
	if postgres.UniqueViolationOf(err) == "orgs_slug_key" {
		if req.Body.Slug == nil {
			return nil, problem.Errorf(http.StatusConflict, "slug_taken", "an organisation of the same name was created at the same moment: try again")
		}
		return nil, problem.Errorf(http.StatusConflict, "slug_taken", "another organisation has the slug %q", *req.Body.Slug)
	}
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
