// Package releases serves releases: immutable (once final) sets of services,
// each with an image per architecture.
package releases

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/registry"
	"github.com/flock-io/flock-api/internal/targetstate"
	"github.com/flock-io/flock-api/workers/nudger"
)

// Releases implements the release operations.
type Releases struct {
	Pool *pgxpool.Pool
	// Nudge hears of a release becoming its fleet's latest final; nil: none.
	Nudge nudger.Notifier
	// Registry is the platform registry every release's images must be in;
	// RegistryHost is its public host[:port], which image references in
	// stored releases (and so target states) start with.
	Registry     *registry.Registry
	RegistryHost string
}

// Release converts a release row.
func Release(r db.Release) (api.Release, error) {
	var services []api.ReleaseService
	if err := json.Unmarshal(r.Services, &services); err != nil {
		return api.Release{}, fmt.Errorf("decode services of release %s: %w", r.ID, err)
	}
	tags := r.Tags
	if tags == nil {
		tags = map[string]string{}
	}
	return api.Release{Id: r.ID, FleetId: r.FleetID, Version: r.Version, Status: api.ReleaseStatus(r.Status),
		Services: services, Tags: tags, CreatedAt: r.CreatedAt, FinalizedAt: r.FinalizedAt}, nil
}

// Image returns a service's image for an architecture, if the release has
// one (the same choice the target state makes).
func Image(s api.ReleaseService, arch string) *api.ServiceImage { return targetstate.Image(s, arch) }

// becameFinal is called in the transaction that makes a release of fleet
// final: the fleet's newest final release is now this one, which is the
// target of its devices when the fleet tracks the latest. A pinned fleet's
// devices are unaffected. The fleet row is locked so that an unpin racing
// with this transaction either sees the release or is seen by it: without
// the lock an unpin could nudge before this commits while this, seeing the
// pin, nudged nobody.
func (h *Releases) becameFinal(ctx context.Context, q *db.Queries, fleet uuid.UUID) error {
	f, err := q.FleetForUpdate(ctx, fleet)
	if err != nil {
		return fmt.Errorf("lock fleet %s: %w", fleet, err)
	}
	if !f.PinnedReleaseID.Valid {
		nudger.FleetAfterCommit(ctx, h.Nudge, fleet)
	}
	return nil
}
