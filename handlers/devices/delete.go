package devices

import (
	"context"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"

	"github.com/flock-io/flock-api/gen/api"
)

// DeviceDelete deletes a device; its tokens stop working at once because
// every device request checks that the device still exists.
func (h *Devices) DeviceDelete(ctx context.Context, req api.DeviceDeleteRequestObject) (api.DeviceDeleteResponseObject, error) {
	if _, err := postgres.Queries(ctx, h.Pool).DeviceDelete(ctx, req.DeviceId); err != nil {
		return nil, fmt.Errorf("delete device %s: %w", req.DeviceId, err)
	}
	return api.DeviceDelete204Response{}, nil
}
