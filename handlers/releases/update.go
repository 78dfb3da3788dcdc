package releases

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/eventdelivery"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/tags"
)

// ReleaseUpdate finalises or fails a draft, or retags any release. A final
// or failed release keeps its status for good.
func (h *Releases) ReleaseUpdate(ctx context.Context, req api.ReleaseUpdateRequestObject) (api.ReleaseUpdateResponseObject, error) {
	q := postgres.Queries(ctx, h.Pool)
	r, err := q.ReleaseForUpdate(ctx, req.ReleaseId)
	if err != nil {
		return nil, fmt.Errorf("load release %s: %w", req.ReleaseId, err)
	}
	status, was := r.Status, r.Status
	if s := req.Body.Status; s != nil && string(*s) != r.Status {
		if r.Status != "draft" {
			return nil, problem.Errorf(http.StatusConflict, "release_immutable",
				"release %s is %s; only a draft can become final or failed", r.ID, r.Status)
		}
		status = string(*s)
		if b, err := q.BuildByRelease(ctx, r.ID); err == nil && b.FinishedAt == nil {
			return nil, problem.Errorf(http.StatusConflict, "release_building",
				"release %s is being made by build %s, which ends it: cancel the build to stop it", r.ID, b.ID)
		} else if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("build of release %s: %w", r.ID, err)
		}
	}
	t := r.Tags
	if req.Body.Tags != nil {
		if t, err = tags.Check((*map[string]string)(req.Body.Tags)); err != nil {
			return nil, err
		}
	}
	r, err = q.ReleaseUpdate(ctx, db.ReleaseUpdateParams{ID: r.ID, Status: status, Tags: t})
	if err != nil {
		return nil, fmt.Errorf("update release %s: %w", req.ReleaseId, err)
	}
	if status != was {
		if err := eventdelivery.EmitRelease(ctx, q, r, uuid.NullUUID{}, eventdelivery.ReleaseStatusChange(status)); err != nil {
			return nil, err
		}
	}
	if status == "final" && status != was {
		if err := h.becameFinal(ctx, q, r.FleetID); err != nil {
			return nil, err
		}
	}
	out, err := Release(r)
	if err != nil {
		return nil, err
	}
	return api.ReleaseUpdate200JSONResponse(out), nil
}
