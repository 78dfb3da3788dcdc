// Package members serves the people of an organisation and their roles.
package members

import (
	"context"
	"fmt"
	"net/http"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers/identity"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// Members implements the member operations.
type Members struct {
	Pool *pgxpool.Pool
}

func fromRow(r db.MemberGetRow) api.Member {
	return api.Member{Role: api.Role(r.Role), CreatedAt: r.JoinedAt, User: identity.User(db.User{
		ID: r.ID, Email: r.Email, Name: r.Name, CreatedAt: r.CreatedAt})}
}

// grantable refuses to hand out a role above the caller's own.
func grantable(acc *auth.Access, role db.OrgRole) error {
	if !auth.AtLeast(acc.Role, role) {
		return problem.Errorf(http.StatusForbidden, "forbidden", "you cannot grant %s: it is above your own role, %s", role, acc.Role)
	}
	return nil
}

// keepAnOwner refuses a change that would leave the organisation without an
// owner. It locks the owner rows, so concurrent demotions serialise.
func keepAnOwner(ctx context.Context, q *db.Queries, acc *auth.Access) error {
	n, err := q.OwnerCountForUpdate(ctx, acc.OrgID)
	if err != nil {
		return fmt.Errorf("count owners of %s: %w", acc.OrgID, err)
	}
	if n <= 1 {
		return problem.New(http.StatusConflict, "last_owner", "an organisation needs an owner: make someone else owner first")
	}
	return nil
}
