package fleets

import (
	"context"
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
	pinned := f.PinnedReleaseID
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
	if f.ReleasePolicy == "track_latest" {
		f.PinnedReleaseID = uuid.NullUUID{}
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
		PinnedReleaseID: f.PinnedReleaseID, Tags: f.Tags})
	if postgres.IsUniqueViolation(err) {
		return nil, problem.Errorf(http.StatusConflict, "name_taken", "the organisation already has a fleet named %q", f.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("update fleet %s: %w", req.FleetId, err)
	}
	// Pinning, repinning or unpinning changes the release of every device
	// without a pin of its own; name, tags and policy alone change nothing.
	if f.PinnedReleaseID != pinned {
		nudger.FleetAfterCommit(ctx, h.Nudge, f.ID)
	}
	return api.FleetUpdate200JSONResponse(Fleet(f)), nil
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
