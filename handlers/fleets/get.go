package fleets

import (
	"context"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// FleetGet returns a fleet.
func (h *Fleets) FleetGet(ctx context.Context, req api.FleetGetRequestObject) (api.FleetGetResponseObject, error) {
	f, err := db.New(h.Pool).FleetGet(ctx, req.FleetId)
	if err != nil {
		return nil, fmt.Errorf("load fleet %s: %w", req.FleetId, err)
	}
	out, err := Fleet(f)
	if err != nil {
		return nil, err
	}
	return api.FleetGet200JSONResponse(out), nil
}
