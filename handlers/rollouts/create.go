package rollouts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers/fleets"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/rollout"
	"github.com/flock-io/flock-api/internal/rolloutstore"
	"github.com/flock-io/flock-api/internal/tags"
)

// RolloutCreate prepares a rollout (state ready): the release must be a
// final release of the fleet other than what the fleet runs now, and the
// groups must fit the devices selected now. Nothing is targeted until
// start.
func (h *Rollouts) RolloutCreate(ctx context.Context, req api.RolloutCreateRequestObject) (api.RolloutCreateResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	q := postgres.Queries(ctx, h.Pool)
	b := req.Body
	fleet, err := q.FleetGet(ctx, req.FleetId)
	if err != nil {
		return nil, fmt.Errorf("load fleet %s: %w", req.FleetId, err)
	}
	if err := releaseToRollOut(ctx, q, fleet, b.ReleaseId); err != nil {
		return nil, err
	}
	if other, err := q.FleetOpenRollout(ctx, fleet.ID); err == nil {
		return nil, problem.Errorf(http.StatusConflict, "fleet_busy",
			"fleet %s has rollout %s (%s); finish, abort or cancel it first", fleet.ID, other.ID, other.State)
	} else if !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("check rollouts of fleet %s: %w", fleet.ID, err)
	}
	sel := selector{}
	if sel.Tags, err = tags.Check((*map[string]string)(b.Tags)); err != nil {
		return nil, err
	}
	group := uuid.NullUUID{}
	if b.DeviceGroupId != nil {
		// Locked, so a delete cannot slip between this check and the insert
		// (the rollout would lose its filter and select the whole fleet).
		g, err := q.DeviceGroupForUpdate(ctx, *b.DeviceGroupId)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && g.OrgID != fleet.OrgID) {
			return nil, problem.Invalid("body", "/device_group_id", fmt.Sprintf("device group %s is not a device group of this organisation", *b.DeviceGroupId))
		}
		if err != nil {
			return nil, fmt.Errorf("load device group %s: %w", *b.DeviceGroupId, err)
		}
		group = uuid.NullUUID{UUID: g.ID, Valid: true}
	}
	spec := specOf(b)
	groups, err := groupSpecs(b.Groups)
	if err != nil {
		return nil, err
	}
	selected, err := q.RolloutCandidateCount(ctx, db.RolloutCandidateCountParams{FleetID: fleet.ID, Tags: tagsJSON(sel.Tags), DeviceGroupID: group})
	if err != nil {
		return nil, fmt.Errorf("count devices selected in fleet %s: %w", fleet.ID, err)
	}
	if err := rollout.Check(spec, groups, int(selected)); err != nil {
		return nil, invalid(err)
	}
	membership := "snapshot"
	if b.Membership != nil {
		membership = string(*b.Membership)
	}
	specJSON, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("encode rollout settings: %w", err)
	}
	selJSON, err := json.Marshal(sel)
	if err != nil {
		return nil, fmt.Errorf("encode rollout selector: %w", err)
	}
	creator := uuid.NullUUID{}
	if p := acc.Principal; p != nil && p.Kind == auth.KindUser {
		creator = uuid.NullUUID{UUID: p.UserID, Valid: true}
	}
	r, err := q.RolloutCreate(ctx, db.RolloutCreateParams{OrgID: fleet.OrgID, FleetID: fleet.ID, ReleaseID: b.ReleaseId,
		Membership: membership, Selector: selJSON, DeviceGroupID: group, Spec: specJSON, CreatedBy: creator})
	if postgres.IsUniqueViolation(err) {
		return nil, busy(fleet.ID)
	}
	if err != nil {
		return nil, fmt.Errorf("create rollout in fleet %s: %w", fleet.ID, err)
	}
	for i, g := range groups {
		gj, err := json.Marshal(g)
		if err != nil {
			return nil, fmt.Errorf("encode group %d: %w", i, err)
		}
		if err := q.RolloutGroupCreate(ctx, db.RolloutGroupCreateParams{RolloutID: r.ID, Idx: int32(i), Name: g.Name, Spec: gj}); err != nil {
			return nil, fmt.Errorf("create group %d of rollout %s: %w", i, r.ID, err)
		}
	}
	if err := rolloutstore.Emit(ctx, q, r, rollout.EventCreated, nil, "", acc.Principal.Label()); err != nil {
		return nil, err
	}
	acc.SetTarget(r.ID.String())
	out, err := load(ctx, q, r)
	if err != nil {
		return nil, err
	}
	return api.RolloutCreate201JSONResponse(out), nil
}

// releaseToRollOut refuses a release that is not a final release of the
// fleet, or that the fleet runs already.
func releaseToRollOut(ctx context.Context, q *db.Queries, fleet db.Fleet, id uuid.UUID) error {
	rel, err := q.ReleaseGet(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && rel.FleetID != fleet.ID) {
		return problem.Invalid("body", "/release_id", fmt.Sprintf("release %s is not a release of this fleet", id))
	}
	if err != nil {
		return fmt.Errorf("load release %s: %w", id, err)
	}
	if rel.Status != "final" {
		return problem.Invalid("body", "/release_id", fmt.Sprintf("release %s is %s; only final releases can be rolled out", id, rel.Status))
	}
	current, err := fleetTarget(ctx, q, fleet)
	if err != nil {
		return err
	}
	if current.Valid && current.UUID == id {
		return problem.Invalid("body", "/release_id", fmt.Sprintf("the fleet runs release %s already", id))
	}
	return nil
}

// fleetTarget is the release the fleet's devices run when nothing else
// decides: its pin, else its newest final release (none when it has none).
func fleetTarget(ctx context.Context, q *db.Queries, fleet db.Fleet) (uuid.NullUUID, error) {
	if fleet.PinnedReleaseID.Valid {
		return fleet.PinnedReleaseID, nil
	}
	latest, err := q.ReleaseLatestFinal(ctx, fleet.ID)
	if errors.Is(err, pgx.ErrNoRows) {
		return uuid.NullUUID{}, nil
	}
	if err != nil {
		return uuid.NullUUID{}, fmt.Errorf("load latest release of fleet %s: %w", fleet.ID, err)
	}
	return uuid.NullUUID{UUID: latest.ID, Valid: true}, nil
}

// busy is the conflict of a second rollout on a fleet that lost the race
// to the unique index (the transaction is aborted: nothing more to read).
func busy(fleet uuid.UUID) error {
	return problem.Errorf(http.StatusConflict, "fleet_busy", "fleet %s has a rollout that has not ended; finish, abort or cancel it first", fleet)
}

func specOf(b *api.RolloutCreate) rollout.Spec {
	s := rollout.Spec{SettleSeconds: int(rollout.DefaultSettle.Seconds()), Window: fleets.Window(b.MaintenanceWindow)}
	if b.RatePerMinute != nil {
		s.RatePerMinute = *b.RatePerMinute
	}
	if b.SettleSeconds != nil {
		s.SettleSeconds = *b.SettleSeconds
	}
	if b.RollbackOnAbort != nil {
		s.RollbackOnAbort = *b.RollbackOnAbort
	}
	if rp := b.Ramp; rp != nil {
		s.Ramp = &rollout.Ramp{Factor: rp.IncrementFactor, EverySucceeded: rp.EverySucceeded}
		if rp.MaxPerMinute != nil {
			s.Ramp.MaxPerMinute = *rp.MaxPerMinute
		}
	}
	return s
}

func groupSpecs(in []api.RolloutGroupSpec) ([]rollout.GroupSpec, error) {
	out := make([]rollout.GroupSpec, len(in))
	for i, g := range in {
		s := rollout.GroupSpec{Name: fmt.Sprintf("group %d", i+1), Percent: g.Percent, Count: g.Count,
			SuccessThreshold: 100, DeviceTimeoutSeconds: int(rollout.DefaultDeviceTimeout.Seconds())}
		if g.Name != nil && strings.TrimSpace(*g.Name) != "" {
			s.Name = strings.TrimSpace(*g.Name)
		}
		if g.Tags != nil {
			t, err := tags.Check((*map[string]string)(g.Tags))
			if err != nil {
				return nil, err
			}
			s.Tags = t
		}
		if g.SuccessThreshold != nil {
			s.SuccessThreshold = *g.SuccessThreshold
		}
		if g.DeviceTimeoutSeconds != nil {
			s.DeviceTimeoutSeconds = *g.DeviceTimeoutSeconds
		}
		if g.SoakSeconds != nil {
			s.SoakSeconds = *g.SoakSeconds
		}
		if g.RequiresApproval != nil {
			s.RequiresApproval = *g.RequiresApproval
		}
		if t := g.ErrorThreshold; t != nil {
			et := &rollout.ErrorThreshold{Percent: t.Percent, MinSample: t.MinSample, Action: string(t.Action)}
			if t.FailureTypes != nil {
				for _, ft := range *t.FailureTypes {
					et.FailureTypes = append(et.FailureTypes, string(ft))
				}
			}
			s.ErrorThreshold = et
		}
		out[i] = s
	}
	return out, nil
}

// invalid turns rollout.Check's errors into a 400 naming every field.
func invalid(err error) error {
	var fes rollout.FieldErrors
	if !errors.As(err, &fes) || len(fes) == 0 {
		return err
	}
	fields := make([]problem.FieldError, len(fes))
	for i, fe := range fes {
		fields[i] = problem.FieldError{In: "body", Field: fe.Field, Detail: fe.Detail}
	}
	return &problem.Error{Status: http.StatusBadRequest, Code: "validation_failed", Detail: fields[0].Field + ": " + fields[0].Detail, Errors: fields}
}
