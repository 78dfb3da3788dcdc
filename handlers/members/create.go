package members

import (
	"context"
	"errors"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"net/http"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// MemberCreate adds a person by email. Someone who never signed in gets a
// user row now and is linked when they first sign in with that email.
func (h *Members) MemberCreate(ctx context.Context, req api.MemberCreateRequestObject) (api.MemberCreateResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	role := db.OrgRole(req.Body.Role)
	if err := grantable(acc, role); err != nil {
		return nil, err
	}
	email := strings.TrimSpace(string(req.Body.Email))
	q := postgres.Queries(ctx, h.Pool)
	u, err := q.UserByEmail(ctx, email)
	if errors.Is(err, pgx.ErrNoRows) {
		u, err = q.UserCreateInvited(ctx, email)
	}
	if err != nil {
		return nil, fmt.Errorf("find or invite %s: %w", email, err)
	}
	_, err = q.MembershipCreate(ctx, db.MembershipCreateParams{OrgID: acc.OrgID, UserID: u.ID, Role: role})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, problem.Errorf(http.StatusConflict, "already_member", "%s is already a member of this organisation", email)
	}
	if err != nil {
		return nil, fmt.Errorf("add %s to %s: %w", u.ID, acc.OrgID, err)
	}
	row, err := q.MemberGet(ctx, db.MemberGetParams{OrgID: acc.OrgID, UserID: u.ID})
	if err != nil {
		return nil, fmt.Errorf("load member %s: %w", u.ID, err)
	}
	acc.SetTarget(u.ID.String())
	return api.MemberCreate201JSONResponse(fromRow(row)), nil
}
