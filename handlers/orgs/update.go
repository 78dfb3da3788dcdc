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

// OrgUpdate renames an organisation.
func (h *Orgs) OrgUpdate(ctx context.Context, req api.OrgUpdateRequestObject) (api.OrgUpdateResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	q := postgres.Queries(ctx, h.Pool)
	o, err := q.OrgByID(ctx, acc.OrgID)
	if err != nil {
		return nil, fmt.Errorf("load org %s: %w", acc.OrgID, err)
	}
	if req.Body.Name != nil {
		if o, err = q.OrgUpdateName(ctx, db.OrgUpdateNameParams{ID: acc.OrgID, Name: strings.TrimSpace(*req.Body.Name)}); err != nil {
			return nil, fmt.Errorf("rename org %s: %w", acc.OrgID, err)
		}
	}
	return api.OrgUpdate200JSONResponse(org(o, acc.Role)), nil
}
