package fleets

import (
	"context"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"net/http"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// FleetDelete deletes a fleet that has no devices, with its releases,
// provisioning keys and variables.
func (h *Fleets) FleetDelete(ctx context.Context, req api.FleetDeleteRequestObject) (api.FleetDeleteResponseObject, error) {
	q := postgres.Queries(ctx, h.Pool)
	if _, err := q.FleetForUpdate(ctx, req.FleetId); err != nil {
		return nil, fmt.Errorf("lock fleet %s: %w", req.FleetId, err)
	}
	n, err := q.DeviceCountByFleet(ctx, req.FleetId)
	if err != nil {
		return nil, fmt.Errorf("count devices of %s: %w", req.FleetId, err)
	}
	if n > 0 {
		return nil, problem.Errorf(http.StatusConflict, "fleet_not_empty", "the fleet still has %d device(s): move or delete them first", n)
	}
	_, err = q.FleetDelete(ctx, req.FleetId)
	if postgres.IsForeignKeyViolation(err) { // a device registered since the count
		return nil, problem.New(http.StatusConflict, "fleet_not_empty", "the fleet still has devices: move or delete them first")
	}
	if err != nil {
		return nil, fmt.Errorf("delete fleet %s: %w", req.FleetId, err)
	}
	return api.FleetDelete204Response{}, nil
}
