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

// OrgUpdate renames an organisation or sets who may open tunnels to its
// devices.
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
	if r := req.Body.TunnelMinRole; r != nil {
		if err := q.OrgSetTunnelMinRole(ctx, db.OrgSetTunnelMinRoleParams{ID: acc.OrgID, TunnelMinRole: db.OrgRole(*r)}); err != nil {
			return nil, fmt.Errorf("set tunnel role of org %s: %w", acc.OrgID, err)
		}
		o.TunnelMinRole = db.OrgRole(*r)
	}
	return api.OrgUpdate200JSONResponse(org(o, acc.Role)), nil
}
