package variables

import (
	"context"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
)

func fleetScope(id uuid.UUID) scope { return scope{fleet: id} }

// FleetVariableList lists a fleet's own variables.
func (h *Variables) FleetVariableList(ctx context.Context, req api.FleetVariableListRequestObject) (api.FleetVariableListResponseObject, error) {
	page, err := h.list(ctx, fleetScope(req.FleetId), listParams{req.Params.Limit, req.Params.Cursor})
	if err != nil {
		return nil, err
	}
	return api.FleetVariableList200JSONResponse(page), nil
}

// FleetVariableCreate sets a fleet variable.
func (h *Variables) FleetVariableCreate(ctx context.Context, req api.FleetVariableCreateRequestObject) (api.FleetVariableCreateResponseObject, error) {
	v, err := h.create(ctx, fleetScope(req.FleetId), req.Body)
	if err != nil {
		return nil, err
	}
	return api.FleetVariableCreate201JSONResponse(v), nil
}

// FleetVariableUpdate changes a fleet variable's value.
func (h *Variables) FleetVariableUpdate(ctx context.Context, req api.FleetVariableUpdateRequestObject) (api.FleetVariableUpdateResponseObject, error) {
	v, err := h.update(ctx, fleetScope(req.FleetId), req.VariableId, req.Body)
	if err != nil {
		return nil, err
	}
	return api.FleetVariableUpdate200JSONResponse(v), nil
}

// FleetVariableDelete removes a fleet variable.
func (h *Variables) FleetVariableDelete(ctx context.Context, req api.FleetVariableDeleteRequestObject) (api.FleetVariableDeleteResponseObject, error) {
	if err := h.delete(ctx, fleetScope(req.FleetId), req.VariableId); err != nil {
		return nil, err
	}
	return api.FleetVariableDelete204Response{}, nil
}
