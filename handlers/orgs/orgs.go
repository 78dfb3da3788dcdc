// Package orgs serves organisations.
package orgs

import (
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// Orgs implements the organisation operations.
type Orgs struct {
	Pool *pgxpool.Pool
}

func org(o db.Org, role db.OrgRole) api.Org {
	return api.Org{Id: o.ID, Name: o.Name, Slug: o.Slug, Role: api.Role(role), TunnelMinRole: api.Role(o.TunnelMinRole),
		CreatedAt: o.CreatedAt, UpdatedAt: o.UpdatedAt}
}
