package variables

import (
	"context"
	"github.com/flock-io/flock-api/internal/postgres"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// DeviceVariableList lists a device's own variables.
func (h *Variables) DeviceVariableList(ctx context.Context, req api.DeviceVariableListRequestObject) (api.DeviceVariableListResponseObject, error) {
	s, err := h.deviceScope(ctx, db.New(h.Pool), req.DeviceId)
	if err != nil {
		return nil, err
	}
	page, err := h.list(ctx, s, listParams{req.Params.Limit, req.Params.Cursor})
	if err != nil {
		return nil, err
	}
	return api.DeviceVariableList200JSONResponse(page), nil
}

// DeviceVariableCreate sets a device variable.
func (h *Variables) DeviceVariableCreate(ctx context.Context, req api.DeviceVariableCreateRequestObject) (api.DeviceVariableCreateResponseObject, error) {
	s, err := h.deviceScope(ctx, postgres.Queries(ctx, h.Pool), req.DeviceId)
	if err != nil {
		return nil, err
	}
	v, err := h.create(ctx, s, req.Body)
	if err != nil {
		return nil, err
	}
	return api.DeviceVariableCreate201JSONResponse(v), nil
}

// DeviceVariableUpdate changes a device variable's value.
func (h *Variables) DeviceVariableUpdate(ctx context.Context, req api.DeviceVariableUpdateRequestObject) (api.DeviceVariableUpdateResponseObject, error) {
	s, err := h.deviceScope(ctx, postgres.Queries(ctx, h.Pool), req.DeviceId)
	if err != nil {
		return nil, err
	}
	v, err := h.update(ctx, s, req.VariableId, req.Body)
	if err != nil {
		return nil, err
	}
	return api.DeviceVariableUpdate200JSONResponse(v), nil
}

// DeviceVariableDelete removes a device variable.
func (h *Variables) DeviceVariableDelete(ctx context.Context, req api.DeviceVariableDeleteRequestObject) (api.DeviceVariableDeleteResponseObject, error) {
	s, err := h.deviceScope(ctx, postgres.Queries(ctx, h.Pool), req.DeviceId)
	if err != nil {
		return nil, err
	}
	if err := h.delete(ctx, s, req.VariableId); err != nil {
		return nil, err
	}
	return api.DeviceVariableDelete204Response{}, nil
}
