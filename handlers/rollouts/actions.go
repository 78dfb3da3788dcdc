package rollouts

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/rollout"
	"github.com/flock-io/flock-api/internal/rolloutstore"
)

// RolloutStart starts a ready rollout.
func (h *Rollouts) RolloutStart(ctx context.Context, req api.RolloutStartRequestObject) (api.RolloutStartResponseObject, error) {
	out, err := h.act(ctx, req.RolloutId, rollout.ActionStart, nil)
	if err != nil {
		return nil, err
	}
	return api.RolloutStart200JSONResponse(out), nil
}

// RolloutPause stops new targeting; devices already updating finish.
func (h *Rollouts) RolloutPause(ctx context.Context, req api.RolloutPauseRequestObject) (api.RolloutPauseResponseObject, error) {
	out, err := h.act(ctx, req.RolloutId, rollout.ActionPause, nil)
	if err != nil {
		return nil, err
	}
	return api.RolloutPause200JSONResponse(out), nil
}

// RolloutResume targets again.
func (h *Rollouts) RolloutResume(ctx context.Context, req api.RolloutResumeRequestObject) (api.RolloutResumeResponseObject, error) {
	out, err := h.act(ctx, req.RolloutId, rollout.ActionResume, nil)
	if err != nil {
		return nil, err
	}
	return api.RolloutResume200JSONResponse(out), nil
}

// RolloutNextGroup moves on to the next group now.
func (h *Rollouts) RolloutNextGroup(ctx context.Context, req api.RolloutNextGroupRequestObject) (api.RolloutNextGroupResponseObject, error) {
	out, err := h.act(ctx, req.RolloutId, rollout.ActionNextGroup, nil)
	if err != nil {
		return nil, err
	}
	return api.RolloutNextGroup200JSONResponse(out), nil
}

// RolloutApprove lets a rollout waiting for approval start its next group.
func (h *Rollouts) RolloutApprove(ctx context.Context, req api.RolloutApproveRequestObject) (api.RolloutApproveResponseObject, error) {
	out, err := h.act(ctx, req.RolloutId, rollout.ActionApprove, nil)
	if err != nil {
		return nil, err
	}
	return api.RolloutApprove200JSONResponse(out), nil
}

// RolloutAbort ends a rollout, putting the touched devices back on their
// previous release when rollback is asked.
func (h *Rollouts) RolloutAbort(ctx context.Context, req api.RolloutAbortRequestObject) (api.RolloutAbortResponseObject, error) {
	var rollback *bool
	if req.Body != nil {
		rollback = req.Body.Rollback
	}
	out, err := h.act(ctx, req.RolloutId, rollout.ActionAbort, rollback)
	if err != nil {
		return nil, err
	}
	return api.RolloutAbort200JSONResponse(out), nil
}

// RolloutCancel ends a rollout that has not started.
func (h *Rollouts) RolloutCancel(ctx context.Context, req api.RolloutCancelRequestObject) (api.RolloutCancelResponseObject, error) {
	out, err := h.act(ctx, req.RolloutId, rollout.ActionCancel, nil)
	if err != nil {
		return nil, err
	}
	return api.RolloutCancel200JSONResponse(out), nil
}

// act takes a person's action on a rollout under its row lock, so it
// cannot interleave with the scheduler's transitions or another action.
func (h *Rollouts) act(ctx context.Context, id uuid.UUID, action string, rollback *bool) (api.Rollout, error) {
	q := postgres.Queries(ctx, h.Pool)
	r, err := q.RolloutForUpdate(ctx, id)
	if err != nil {
		return api.Rollout{}, fmt.Errorf("lock rollout %s: %w", id, err)
	}
	spec, err := rolloutstore.Spec(r)
	if err != nil {
		return api.Rollout{}, err
	}
	rb := spec.RollbackOnAbort
	if rollback != nil {
		rb = *rollback
	}
	step, err := rollout.Act(r.State, action, rb)
	if errors.Is(err, rollout.ErrInvalidAction) {
		return api.Rollout{}, problem.Errorf(http.StatusConflict, "invalid_state",
			"rollout %s is %s; %s is not possible in that state", r.ID, r.State, action)
	}
	if err != nil {
		return api.Rollout{}, err
	}
	actor := auth.AccessFrom(ctx).Principal.Label()
	switch action {
	case rollout.ActionStart:
		r, err = h.start(ctx, q, r, actor)
	case rollout.ActionResume:
		// The scheduler paused it (a tripped threshold, a group that ended
		// below its success threshold) and a person has looked: the
		// group's verdict has had its say and does not stop it again.
		if r.StateReason != "" {
			if err := q.RolloutGroupAcknowledge(ctx, db.RolloutGroupAcknowledgeParams{RolloutID: r.ID, Idx: r.CurrentGroup}); err != nil {
				return api.Rollout{}, fmt.Errorf("acknowledge group %d of rollout %s: %w", r.CurrentGroup, r.ID, err)
			}
		}
		r, err = rolloutstore.Act(ctx, q, h.Nudge, r, action, step, "", actor)
	default:
		r, err = rolloutstore.Act(ctx, q, h.Nudge, r, action, step, "", actor)
	}
	if errors.Is(err, rolloutstore.ErrLastGroup) {
		return api.Rollout{}, problem.Errorf(http.StatusConflict, "last_group",
			"rollout %s is in its last group (%d); there is no next group", r.ID, r.CurrentGroup)
	}
	if err != nil {
		return api.Rollout{}, err
	}
	return load(ctx, q, r)
}

// start takes hold of the fleet: the devices selected now are placed in
// their groups, the fleet is held on what it runs (so a release finalised
// meanwhile cannot move it past the rollout), and the first group runs.
func (h *Rollouts) start(ctx context.Context, q *db.Queries, r db.Rollout, actor string) (db.Rollout, error) {
	fleet, err := q.FleetForUpdate(ctx, r.FleetID)
	if err != nil {
		return r, fmt.Errorf("lock fleet %s: %w", r.FleetID, err)
	}
	if err := releaseToRollOut(ctx, q, fleet, r.ReleaseID); err != nil {
		var p *problem.Error
		if errors.As(err, &p) {
			return r, problem.Errorf(http.StatusConflict, "cannot_start", "rollout %s cannot start: %s", r.ID, p.Detail)
		}
		return r, err
	}
	from, err := fleetTarget(ctx, q, fleet)
	if err != nil {
		return r, err
	}
	return rolloutstore.Start(ctx, q, r, fleet.ReleasePolicy, from, actor)
}
