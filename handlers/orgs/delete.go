package orgs

import (
	"context"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"net/http"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// OrgDelete deletes an organisation with its memberships and API keys; it
// is refused while the organisation still has fleets.
func (h *Orgs) OrgDelete(ctx context.Context, req api.OrgDeleteRequestObject) (api.OrgDeleteResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	q := postgres.Queries(ctx, h.Pool)
	n, err := q.FleetCountByOrg(ctx, acc.OrgID)
	if err != nil {
		return nil, fmt.Errorf("count fleets of %s: %w", acc.OrgID, err)
	}
	if n > 0 {
		return nil, problem.Errorf(http.StatusConflict, "org_not_empty", "the organisation still has %d fleet(s): delete them first", n)
	}
	_, err = q.OrgDelete(ctx, acc.OrgID)
	if postgres.IsForeignKeyViolation(err) { // a fleet created since the count
		return nil, problem.New(http.StatusConflict, "org_not_empty", "the organisation still has fleets: delete them first")
	}
	if err != nil {
		return nil, fmt.Errorf("delete org %s: %w", acc.OrgID, err)
	}
	return api.OrgDelete204Response{}, nil
}
