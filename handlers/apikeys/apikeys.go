// Package apikeys serves organisation API keys.
package apikeys

import (
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// APIKeys implements the API key operations.
type APIKeys struct {
	Pool *pgxpool.Pool
}

func apiKey(k db.ApiKey) api.ApiKey {
	out := api.ApiKey{Id: k.ID, Name: k.Name, Role: api.Role(k.Role), Prefix: k.Prefix, CreatedAt: k.CreatedAt,
		ExpiresAt: k.ExpiresAt, LastUsedAt: k.LastUsedAt}
	if k.CreatedBy.Valid {
		out.CreatedBy = &k.CreatedBy.UUID
	}
	return out
}
