package orgs

import (
	"context"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
)

// OrgGet returns an organisation the caller belongs to.
func (h *Orgs) OrgGet(ctx context.Context, req api.OrgGetRequestObject) (api.OrgGetResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	o, err := db.New(h.Pool).OrgByID(ctx, acc.OrgID)
	if err != nil {
		return nil, fmt.Errorf("load org %s: %w", acc.OrgID, err)
	}
	return api.OrgGet200JSONResponse(org(o, acc.Role)), nil
}
