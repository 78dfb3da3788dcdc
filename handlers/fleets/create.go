package fleets

import (
	"context"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"net/http"
	"strings"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/tags"
)

// FleetCreate creates a fleet that tracks its latest final release.
func (h *Fleets) FleetCreate(ctx context.Context, req api.FleetCreateRequestObject) (api.FleetCreateResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	t, err := tags.Check((*map[string]string)(req.Body.Tags))
	if err != nil {
		return nil, err
	}
	name := strings.TrimSpace(req.Body.Name)
	f, err := postgres.Queries(ctx, h.Pool).FleetCreate(ctx, db.FleetCreateParams{
		OrgID: acc.OrgID, Name: name, Architecture: string(req.Body.Architecture), Tags: t, Slug: req.Body.Slug})
	if postgres.UniqueViolationOf(err) == "fleets_slug_key" {
		return nil, problem.Errorf(http.StatusConflict, "slug_taken", "the organisation already has a fleet with the slug %q", slugOf(req.Body.Slug, name))
	}
	if postgres.IsUniqueViolation(err) {
		return nil, problem.Errorf(http.StatusConflict, "name_taken", "the organisation already has a fleet named %q", name)
	}
	if err != nil {
		return nil, fmt.Errorf("create fleet in %s: %w", acc.OrgID, err)
	}
	acc.SetTarget(f.ID.String())
	out, err := Fleet(f)
	if err != nil {
		return nil, err
	}
	return api.FleetCreate201JSONResponse(out), nil
}

// slugOf names the slug a refused insert tried: the one given, or (two
// fleets of one name created at once) the name's.
func slugOf(given *string, name string) string {
	if given != nil {
		return *given
	}
	return name
}
