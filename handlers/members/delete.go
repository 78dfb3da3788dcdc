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

// MemberDelete removes a member. Anyone may leave; removing someone else
// takes an admin who is not outranked by them; the last owner stays.
func (h *Members) MemberDelete(ctx context.Context, req api.MemberDeleteRequestObject) (api.MemberDeleteResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	q := postgres.Queries(ctx, h.Pool)
	target, err := q.MemberGet(ctx, db.MemberGetParams{OrgID: acc.OrgID, UserID: req.UserId})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, problem.Errorf(http.StatusNotFound, "not_found", "member %s not found", req.UserId)
	}
	if err != nil {
		return nil, fmt.Errorf("load member %s: %w", req.UserId, err)
	}
	self := acc.Principal.Kind == auth.KindUser && acc.Principal.UserID == req.UserId
	if !self {
		if !auth.AtLeast(acc.Role, db.OrgRoleAdmin) {
			return nil, problem.Errorf(http.StatusForbidden, "forbidden",
				"member:delete of someone else needs the admin role or higher in this organisation; you have %s", acc.Role)
		}
		if !auth.AtLeast(acc.Role, target.Role) {
			return nil, problem.Errorf(http.StatusForbidden, "forbidden", "you cannot remove a %s: the role is above your own, %s", target.Role, acc.Role)
		}
	}
	if target.Role == db.OrgRoleOwner {
		if err := keepAnOwner(ctx, q, acc); err != nil {
			return nil, err
		}
	}
	if _, err := q.MembershipDelete(ctx, db.MembershipDeleteParams{OrgID: acc.OrgID, UserID: req.UserId}); err != nil {
		return nil, fmt.Errorf("remove %s from %s: %w", req.UserId, acc.OrgID, err)
	}
	return api.MemberDelete204Response{}, nil
}
