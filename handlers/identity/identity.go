// Package identity serves the signed-in user.
package identity

import (
	openapi_types "github.com/oapi-codegen/runtime/types"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// Identity implements the identity operations.
type Identity struct {
	Pool *pgxpool.Pool
}

// User converts a user row; other resources embed users too.
func User(u db.User) api.User {
	return api.User{Id: u.ID, Email: openapi_types.Email(u.Email), Name: u.Name, CreatedAt: u.CreatedAt}
}
