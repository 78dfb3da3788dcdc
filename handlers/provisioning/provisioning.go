// Package provisioning serves the keys devices register into a fleet with.
package provisioning

import (
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// Provisioning implements the provisioning key operations.
type Provisioning struct {
	Pool *pgxpool.Pool
}

func key(k db.ProvisioningKey) api.ProvisioningKey {
	out := api.ProvisioningKey{Id: k.ID, FleetId: k.FleetID, Name: k.Name, Prefix: k.Prefix, Uses: int(k.Uses),
		CreatedAt: k.CreatedAt, ExpiresAt: k.ExpiresAt, RevokedAt: k.RevokedAt}
	if k.MaxUses != nil {
		m := int(*k.MaxUses)
		out.MaxUses = &m
	}
	if k.CreatedBy.Valid {
		out.CreatedBy = &k.CreatedBy.UUID
	}
	return out
}
