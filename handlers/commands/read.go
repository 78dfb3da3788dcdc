package commands

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/http/pagination"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// CommandGet reads one command and its status.
func (h *Commands) CommandGet(ctx context.Context, req api.CommandGetRequestObject) (api.CommandGetResponseObject, error) {
	c, err := db.New(h.Pool).CommandGet(ctx, req.CommandId)
	if errors.Is(err, pgx.ErrNoRows) {
		// Deleted with its device since the guard looked.
		err = problem.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("load command %s: %w", req.CommandId, err)
	}
	return api.CommandGet200JSONResponse(convert(c)), nil
}

// DeviceCommandList lists a device's commands, newest first.
func (h *Commands) DeviceCommandList(ctx context.Context, req api.DeviceCommandListRequestObject) (api.DeviceCommandListResponseObject, error) {
	beforeT, beforeID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	var status *string
	if req.Params.Status != nil {
		s := string(*req.Params.Status)
		status = &s
	}
	rows, err := db.New(h.Pool).CommandList(ctx, db.CommandListParams{DeviceID: req.DeviceId, Status: status,
		BeforeTime: beforeT, BeforeID: beforeID, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list commands of device %s: %w", req.DeviceId, err)
	}
	items, next, err := pagination.Page(rows, limit, func(c db.Command) (time.Time, uuid.UUID) { return c.CreatedAt, c.ID },
		func(c db.Command) (api.Command, error) { return convert(c), nil })
	if err != nil {
		return nil, err
	}
	return api.DeviceCommandList200JSONResponse(api.CommandPage{Items: items, NextCursor: next}), nil
}
