package members

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

// MemberUpdate changes a member's role, within the caller's own rank; the
// last owner keeps ownership.
func (h *Members) MemberUpdate(ctx context.Context, req api.MemberUpdateRequestObject) (api.MemberUpdateResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	q := postgres.Queries(ctx, h.Pool)
	target, err := q.MemberGet(ctx, db.MemberGetParams{OrgID: acc.OrgID, UserID: req.UserId})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, problem.Errorf(http.StatusNotFound, "not_found", "member %s not found", req.UserId)
	}
	if err != nil {
		return nil, fmt.Errorf("load member %s: %w", req.UserId, err)
	}
	role := db.OrgRole(req.Body.Role)
	if !auth.AtLeast(acc.Role, target.Role) {
		return nil, problem.Errorf(http.StatusForbidden, "forbidden", "you cannot change a %s: the role is above your own, %s", target.Role, acc.Role)
	}
	if err := grantable(acc, role); err != nil {
		return nil, err
	}
	if target.Role == db.OrgRoleOwner && role != db.OrgRoleOwner {
		if err := keepAnOwner(ctx, q, acc); err != nil {
			return nil, err
		}
	}
	if _, err := q.MembershipUpdateRole(ctx, db.MembershipUpdateRoleParams{OrgID: acc.OrgID, UserID: req.UserId, Role: role}); err != nil {
		return nil, fmt.Errorf("change role of %s: %w", req.UserId, err)
	}
	target.Role = role
	return api.MemberUpdate200JSONResponse(fromRow(target)), nil
}
