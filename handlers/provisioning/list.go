package provisioning

import (
	"context"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/pagination"
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
	page := api.ProvisioningKeyList200JSONResponse{Items: make([]api.ProvisioningKey, 0, len(rows))}
	if len(rows) > int(limit) {
		rows = rows[:limit]
		last := rows[len(rows)-1]
		next := pagination.Encode(last.CreatedAt, last.ID)
		page.NextCursor = &next
	}
	for _, k := range rows {
		page.Items = append(page.Items, key(k))
	}
	return page, nil
}
