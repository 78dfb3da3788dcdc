// Package devicedata serves what devices send in volume: telemetry series, metric names, container logs and update events.
package devicedata

import (
	"context"
	"errors"

	"github.com/flock-io/flock-api/gen/api"
)

// DeviceData implements its operations of the OpenAPI document.
// Skeleton from the issue 13 spec commit: the methods are filled in by the
// helper that owns this package before any of it is released.
type DeviceData struct{}

var errTODO = errors.New("not implemented yet")

func (h *DeviceData) DeviceLogList(ctx context.Context, req api.DeviceLogListRequestObject) (api.DeviceLogListResponseObject, error) {
	return nil, errTODO
}

func (h *DeviceData) DeviceMetricList(ctx context.Context, req api.DeviceMetricListRequestObject) (api.DeviceMetricListResponseObject, error) {
	return nil, errTODO
}

func (h *DeviceData) DeviceTelemetryGet(ctx context.Context, req api.DeviceTelemetryGetRequestObject) (api.DeviceTelemetryGetResponseObject, error) {
	return nil, errTODO
}

func (h *DeviceData) DeviceUpdateEventList(ctx context.Context, req api.DeviceUpdateEventListRequestObject) (api.DeviceUpdateEventListResponseObject, error) {
	return nil, errTODO
}
