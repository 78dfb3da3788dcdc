package fleets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"net/http"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/tags"
	"github.com/flock-io/flock-api/workers/nudger"
)

// FleetUpdate renames, retags or pins a fleet. Pinning names a final release
// of the fleet; tracking the latest clears the pin.
func (h *Fleets) FleetUpdate(ctx context.Context, req api.FleetUpdateRequestObject) (api.FleetUpdateResponseObject, error) {
	q := postgres.Queries(ctx, h.Pool)
	f, err := q.FleetForUpdate(ctx, req.FleetId)
	if err != nil {
		return nil, fmt.Errorf("load fleet %s: %w", req.FleetId, err)
	}
	pinned, policy := f.PinnedReleaseID, f.ReleasePolicy
	b := req.Body
	if b.Name != nil {
		f.Name = strings.TrimSpace(*b.Name)
	}
	if b.Tags != nil {
		if f.Tags, err = tags.Check((*map[string]string)(b.Tags)); err != nil {
			return nil, err
		}
	}
	if b.ReleasePolicy != nil {
		f.ReleasePolicy = string(*b.ReleasePolicy)
	}
	if b.PinnedReleaseId.IsSpecified() {
		if b.PinnedReleaseId.IsNull() {
			f.PinnedReleaseID = uuid.NullUUID{}
			if b.ReleasePolicy == nil {
				f.ReleasePolicy = "track_latest"
			}
		} else {
			f.PinnedReleaseID = uuid.NullUUID{UUID: b.PinnedReleaseId.MustGet(), Valid: true}
			if b.ReleasePolicy == nil {
				f.ReleasePolicy = "pinned"
			}
		}
	}
	if b.MaintenanceWindow.IsSpecified() {
		f.MaintenanceWindow = nil
		if !b.MaintenanceWindow.IsNull() {
			w := Window(ptr(b.MaintenanceWindow.MustGet()))
			if fe := w.Check(); fe != nil {
				return nil, problem.Invalid("body", "/maintenance_window"+fe.Field, fe.Detail)
			}
			if f.MaintenanceWindow, err = json.Marshal(w); err != nil {
				return nil, fmt.Errorf("encode maintenance window: %w", err)
			}
		}
	}
	if f.ReleasePolicy == "track_latest" {
		f.PinnedReleaseID = uuid.NullUUID{}
	}
	moves := f.PinnedReleaseID != pinned || f.ReleasePolicy != policy
	if moves {
		// A running rollout holds the fleet on a release and moves it when
		// it finishes; a person moving it meanwhile would update every
		// device the rollout has not reached, unwatched.
		active, err := q.FleetActiveRollout(ctx, f.ID)
		if err == nil {
			return nil, problem.Errorf(http.StatusConflict, "rollout_active",
				"rollout %s (%s) holds fleet %s; abort it or let it finish before changing the fleet's release", active.ID, active.State, f.ID)
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("check rollouts of fleet %s: %w", f.ID, err)
		}
		// The person chooses what the fleet runs: assignments an aborted
		// rollout left behind give way to it.
		if _, err := q.FleetClearAssignments(ctx, f.ID); err != nil {
			return nil, fmt.Errorf("clear rollout assignments of fleet %s: %w", f.ID, err)
		}
	}
	if f.ReleasePolicy == "pinned" {
		if !f.PinnedReleaseID.Valid {
			return nil, problem.Invalid("body", "/pinned_release_id", "a pinned fleet needs pinned_release_id")
		}
		if err := FinalReleaseOf(ctx, q, f.PinnedReleaseID.UUID, f.ID); err != nil {
			return nil, err
		}
	}
	f, err = q.FleetUpdate(ctx, db.FleetUpdateParams{ID: f.ID, Name: f.Name, ReleasePolicy: f.ReleasePolicy,
		PinnedReleaseID: f.PinnedReleaseID, Tags: f.Tags, MaintenanceWindow: f.MaintenanceWindow})
	if postgres.IsUniqueViolation(err) {
		return nil, problem.Errorf(http.StatusConflict, "name_taken", "the organisation already has a fleet named %q", f.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("update fleet %s: %w", req.FleetId, err)
	}
	// Pinning, repinning or unpinning changes the release of every device
	// without a pin of its own; name, tags and window change nothing.
	if moves {
		nudger.FleetAfterCommit(ctx, h.Nudge, f.ID)
	}
	out, err := Fleet(f)
	if err != nil {
		return nil, err
	}
	return api.FleetUpdate200JSONResponse(out), nil
}

// FinalReleaseOf refuses a release that is not a final release of fleet: pins
// never point at drafts or at another fleet's (or organisation's) releases.
func FinalReleaseOf(ctx context.Context, q *db.Queries, release, fleet uuid.UUID) error {
	r, err := q.ReleaseGet(ctx, release)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && r.FleetID != fleet) {
		return problem.Invalid("body", "/pinned_release_id", fmt.Sprintf("release %s is not a release of this fleet", release))
	}
	if err != nil {
		return fmt.Errorf("load release %s: %w", release, err)
	}
	if r.Status != "final" {
		return problem.Invalid("body", "/pinned_release_id", fmt.Sprintf("release %s is %s; only final releases can be pinned", release, r.Status))
	}
	return nil
}

func ptr[T any](v T) *T { return &v }
