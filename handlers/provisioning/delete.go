package provisioning

import (
	"context"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"net/http"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// ProvisioningKeyDelete revokes a key; the row stays so the key's history
// (uses, who made it) remains visible in the list.
func (h *Provisioning) ProvisioningKeyDelete(ctx context.Context, req api.ProvisioningKeyDeleteRequestObject) (api.ProvisioningKeyDeleteResponseObject, error) {
	q := postgres.Queries(ctx, h.Pool)
	n, err := q.ProvisioningKeyRevoke(ctx, db.ProvisioningKeyRevokeParams{FleetID: req.FleetId, ID: req.KeyId})
	if err != nil {
		return nil, fmt.Errorf("revoke provisioning key %s: %w", req.KeyId, err)
	}
	if n == 0 {
		if _, err := q.ProvisioningKeyGet(ctx, db.ProvisioningKeyGetParams{FleetID: req.FleetId, ID: req.KeyId}); err != nil {
			return nil, problem.Errorf(http.StatusNotFound, "not_found", "provisioning key %s not found", req.KeyId)
		}
		// Already revoked: revoking again changes nothing.
	}
	return api.ProvisioningKeyDelete204Response{}, nil
}
