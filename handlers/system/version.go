// Package system serves facts about the deployment itself.
package system

import (
	"context"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/buildinfo"
)

// System implements the system operations.
type System struct {
	DB      db.Querier
	Build   buildinfo.Info
	Targets []string
}

// VersionGet reports the build, the mounted targets and the database state.
func (h *System) VersionGet(ctx context.Context, _ api.VersionGetRequestObject) (api.VersionGetResponseObject, error) {
	dbv, err := h.DB.DatabaseVersion(ctx)
	if err != nil {
		return nil, fmt.Errorf("read database version: %w", err)
	}
	return api.VersionGet200JSONResponse{
		Version:   h.Build.Version,
		Commit:    h.Build.Commit,
		GoVersion: h.Build.GoVersion,
		Targets:   h.Targets,
		Database: api.DatabaseVersion{
			ServerVersion: dbv.ServerVersion,
			SchemaVersion: dbv.SchemaVersion,
		},
	}, nil
}
