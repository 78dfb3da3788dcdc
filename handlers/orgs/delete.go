package orgs

import (
	"context"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/dbtx"
)

// OrgDelete deletes an organisation with its memberships and API keys.
// (Refusing while fleets remain comes with fleets.)
func (h *Orgs) OrgDelete(ctx context.Context, req api.OrgDeleteRequestObject) (api.OrgDeleteResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	if _, err := dbtx.Queries(ctx, h.Pool).OrgDelete(ctx, acc.OrgID); err != nil {
		return nil, fmt.Errorf("delete org %s: %w", acc.OrgID, err)
	}
	return api.OrgDelete204Response{}, nil
}
