// Package fleets serves fleets: groups of devices of one architecture that
// run the same releases.
package fleets

import (
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/workers/nudger"
)

// Fleets implements the fleet operations.
type Fleets struct {
	Pool *pgxpool.Pool
	// Nudge hears of committed changes to the fleet's target; nil: none.
	Nudge nudger.Notifier
}

// Fleet converts a fleet row.
func Fleet(f db.Fleet) (api.Fleet, error) {
	out := api.Fleet{Id: f.ID, OrgId: f.OrgID, Name: f.Name, Slug: f.Slug, Architecture: api.Architecture(f.Architecture),
		ReleasePolicy: api.ReleasePolicy(f.ReleasePolicy), Tags: f.Tags, CreatedAt: f.CreatedAt, UpdatedAt: f.UpdatedAt}
	if f.PinnedReleaseID.Valid {
		out.PinnedReleaseId = &f.PinnedReleaseID.UUID
	}
	if out.Tags == nil {
		out.Tags = map[string]string{}
	}
	w, err := APIWindow(f.MaintenanceWindow)
	if err != nil {
		return out, fmt.Errorf("fleet %s: %w", f.ID, err)
	}
	out.MaintenanceWindow = w
	return out, nil
}
