package provisioning

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/http/pagination"
)

// ProvisioningKeyList lists a fleet's keys, newest first, without secrets.
func (h *Provisioning) ProvisioningKeyList(ctx context.Context, req api.ProvisioningKeyListRequestObject) (api.ProvisioningKeyListResponseObject, error) {
	beforeT, beforeID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	rows, err := db.New(h.Pool).ProvisioningKeyList(ctx, db.ProvisioningKeyListParams{FleetID: req.FleetId,
		BeforeTime: beforeT, BeforeID: beforeID, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list provisioning keys of %s: %w", req.FleetId, err)
	}
	items, next, err := pagination.Page(rows, limit, func(k db.ProvisioningKey) (time.Time, uuid.UUID) { return k.CreatedAt, k.ID },
		pagination.Plain(key))
	if err != nil {
		return nil, err
	}
	return api.ProvisioningKeyList200JSONResponse{Items: items, NextCursor: next}, nil
}
