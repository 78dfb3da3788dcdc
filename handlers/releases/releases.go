// Package releases serves releases: immutable (once final) sets of services,
// each with an image per architecture.
package releases

import (
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// Releases implements the release operations.
type Releases struct {
	Pool *pgxpool.Pool
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

// Image returns a service's image for an architecture, if the release has one.
func Image(s api.ReleaseService, arch string) *api.ServiceImage {
	switch arch {
	case "amd64":
		return s.Images.Amd64
	case "arm64":
		return s.Images.Arm64
	case "armv7":
		return s.Images.Armv7
	case "armv6":
		return s.Images.Armv6
	case "i386":
		return s.Images.I386
	case "riscv64":
		return s.Images.Riscv64
	}
	return nil
}
