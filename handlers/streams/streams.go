// Package streams serves the live event streams (Server-Sent Events and WebSocket) of organisations, fleets, device groups, devices, rollouts and device logs.
package streams

import (
	"context"
	"errors"

	"github.com/flock-io/flock-api/gen/api"
)

// Streams implements its operations of the OpenAPI document.
// Skeleton from the issue 13 spec commit: the methods are filled in by the
// helper that owns this package before any of it is released.
type Streams struct{}

var errTODO = errors.New("not implemented yet")

func (h *Streams) DeviceGroupEventsStream(ctx context.Context, req api.DeviceGroupEventsStreamRequestObject) (api.DeviceGroupEventsStreamResponseObject, error) {
	return nil, errTODO
}

func (h *Streams) DeviceGroupEventsWebsocket(ctx context.Context, req api.DeviceGroupEventsWebsocketRequestObject) (api.DeviceGroupEventsWebsocketResponseObject, error) {
	return nil, errTODO
}

func (h *Streams) DeviceEventsStream(ctx context.Context, req api.DeviceEventsStreamRequestObject) (api.DeviceEventsStreamResponseObject, error) {
	return nil, errTODO
}

func (h *Streams) DeviceEventsWebsocket(ctx context.Context, req api.DeviceEventsWebsocketRequestObject) (api.DeviceEventsWebsocketResponseObject, error) {
	return nil, errTODO
}

func (h *Streams) DeviceLogStream(ctx context.Context, req api.DeviceLogStreamRequestObject) (api.DeviceLogStreamResponseObject, error) {
	return nil, errTODO
}

func (h *Streams) DeviceLogWebsocket(ctx context.Context, req api.DeviceLogWebsocketRequestObject) (api.DeviceLogWebsocketResponseObject, error) {
	return nil, errTODO
}

func (h *Streams) FleetEventsStream(ctx context.Context, req api.FleetEventsStreamRequestObject) (api.FleetEventsStreamResponseObject, error) {
	return nil, errTODO
}

func (h *Streams) FleetEventsWebsocket(ctx context.Context, req api.FleetEventsWebsocketRequestObject) (api.FleetEventsWebsocketResponseObject, error) {
	return nil, errTODO
}

func (h *Streams) OrgEventsStream(ctx context.Context, req api.OrgEventsStreamRequestObject) (api.OrgEventsStreamResponseObject, error) {
	return nil, errTODO
}

func (h *Streams) OrgEventsWebsocket(ctx context.Context, req api.OrgEventsWebsocketRequestObject) (api.OrgEventsWebsocketResponseObject, error) {
	return nil, errTODO
}

func (h *Streams) RolloutEventsStream(ctx context.Context, req api.RolloutEventsStreamRequestObject) (api.RolloutEventsStreamResponseObject, error) {
	return nil, errTODO
}

func (h *Streams) RolloutEventsWebsocket(ctx context.Context, req api.RolloutEventsWebsocketRequestObject) (api.RolloutEventsWebsocketResponseObject, error) {
	return nil, errTODO
}
