package apikeys

import (
	"context"
	"errors"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"net/http"

	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// ApiKeyDelete revokes a key at once. Below admin, only the key's creator may.
func (h *APIKeys) ApiKeyDelete(ctx context.Context, req api.ApiKeyDeleteRequestObject) (api.ApiKeyDeleteResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	q := postgres.Queries(ctx, h.Pool)
	k, err := q.ApiKeyGet(ctx, db.ApiKeyGetParams{OrgID: acc.OrgID, ID: req.KeyId})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, problem.Errorf(http.StatusNotFound, "not_found", "API key %s not found", req.KeyId)
	}
	if err != nil {
		return nil, fmt.Errorf("load API key %s: %w", req.KeyId, err)
	}
	own := acc.Principal.Kind == auth.KindUser && k.CreatedBy.Valid && k.CreatedBy.UUID == acc.Principal.UserID
	if !own && !auth.AtLeast(acc.Role, db.OrgRoleAdmin) {
		return nil, problem.Errorf(http.StatusForbidden, "forbidden",
			"revoking a key someone else created needs the admin role or higher; you have %s", acc.Role)
	}
	if _, err := q.ApiKeyDelete(ctx, db.ApiKeyDeleteParams{OrgID: acc.OrgID, ID: req.KeyId}); err != nil {
		return nil, fmt.Errorf("delete API key %s: %w", req.KeyId, err)
	}
	return api.ApiKeyDelete204Response{}, nil
}
