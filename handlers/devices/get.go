package devices

import (
	"context"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// DeviceGet returns a device with its latest reported state, from the KV
// store when the ingester has a newer one than PostgreSQL.
func (h *Devices) DeviceGet(ctx context.Context, req api.DeviceGetRequestObject) (api.DeviceGetResponseObject, error) {
	d, err := db.New(h.Pool).DeviceGet(ctx, req.DeviceId)
	if err != nil {
		return nil, fmt.Errorf("load device %s: %w", req.DeviceId, err)
	}
	out, err := h.device(ctx, d)
	if err != nil {
		return nil, err
	}
	return api.DeviceGet200JSONResponse(out), nil
}
