package apikeys

import (
	"context"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// ApiKeyCreate creates a key with a role no higher than its creator's. The
// secret is returned once; only its hash is stored.
func (h *APIKeys) ApiKeyCreate(ctx context.Context, req api.ApiKeyCreateRequestObject) (api.ApiKeyCreateResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	role := db.OrgRole(req.Body.Role)
	if !auth.AtLeast(acc.Role, role) {
		return nil, problem.Errorf(http.StatusForbidden, "forbidden", "an API key's role is at most its creator's: you are %s, not %s", acc.Role, role)
	}
	if e := req.Body.ExpiresAt; e != nil && !e.After(time.Now()) {
		return nil, problem.Invalid("body", "/expires_at", "expires_at is in the past")
	}
	id := uuid.New()
	secret, prefix, hash, err := auth.NewAPIKeySecret(id)
	if err != nil {
		return nil, fmt.Errorf("generate API key secret: %w", err)
	}
	k, err := postgres.Queries(ctx, h.Pool).ApiKeyCreate(ctx, db.ApiKeyCreateParams{
		ID: id, OrgID: acc.OrgID, Name: strings.TrimSpace(req.Body.Name), Role: role, Prefix: prefix, SecretHash: hash,
		CreatedBy: uuid.NullUUID{UUID: acc.Principal.UserID, Valid: true}, ExpiresAt: req.Body.ExpiresAt,
	})
	if err != nil {
		return nil, fmt.Errorf("create API key in %s: %w", acc.OrgID, err)
	}
	acc.SetTarget(id.String())
	out := apiKey(k)
	return api.ApiKeyCreate201JSONResponse{
		Id: out.Id, Name: out.Name, Role: out.Role, Prefix: out.Prefix, CreatedAt: out.CreatedAt,
		CreatedBy: out.CreatedBy, ExpiresAt: out.ExpiresAt, Secret: secret,
	}, nil
}
