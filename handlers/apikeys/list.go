package apikeys

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/pagination"
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
	items, next, err := pagination.Page(rows, limit, func(k db.ApiKey) (time.Time, uuid.UUID) { return k.CreatedAt, k.ID },
		pagination.Plain(apiKey))
	if err != nil {
		return nil, err
	}
	return api.ApiKeyList200JSONResponse{Items: items, NextCursor: next}, nil
}
