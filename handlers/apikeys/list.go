package apikeys

import (
	"context"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/pagination"
)

// ApiKeyList lists an organisation's keys, newest first, without secrets.
func (h *APIKeys) ApiKeyList(ctx context.Context, req api.ApiKeyListRequestObject) (api.ApiKeyListResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	beforeT, beforeID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	rows, err := db.New(h.Pool).ApiKeyList(ctx, db.ApiKeyListParams{OrgID: acc.OrgID, BeforeTime: beforeT, BeforeID: beforeID, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list API keys of %s: %w", acc.OrgID, err)
	}
	page := api.ApiKeyList200JSONResponse{Items: make([]api.ApiKey, 0, len(rows))}
	if len(rows) > int(limit) {
		rows = rows[:limit]
		last := rows[len(rows)-1]
		next := pagination.Encode(last.CreatedAt, last.ID)
		page.NextCursor = &next
	}
	for _, k := range rows {
		page.Items = append(page.Items, apiKey(k))
	}
	return page, nil
}
