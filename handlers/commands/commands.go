// Package commands serves device commands: sending one, and reading what became of it.
package commands

import (
	"context"
	"errors"

	"github.com/flock-io/flock-api/gen/api"
)

// Commands implements its operations of the OpenAPI document.
// Skeleton from the issue 13 spec commit: the methods are filled in by the
// helper that owns this package before any of it is released.
type Commands struct{}

var errTODO = errors.New("not implemented yet")

func (h *Commands) CommandGet(ctx context.Context, req api.CommandGetRequestObject) (api.CommandGetResponseObject, error) {
	return nil, errTODO
}

func (h *Commands) DeviceCommandList(ctx context.Context, req api.DeviceCommandListRequestObject) (api.DeviceCommandListResponseObject, error) {
	return nil, errTODO
}

func (h *Commands) DeviceCommandCreate(ctx context.Context, req api.DeviceCommandCreateRequestObject) (api.DeviceCommandCreateResponseObject, error) {
	return nil, errTODO
}
