// Package handlers assembles the resource handlers into the one value that
// implements the generated strict server interface.
package handlers

import (
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers/apikeys"
	"github.com/flock-io/flock-api/handlers/auditlog"
	"github.com/flock-io/flock-api/handlers/identity"
	"github.com/flock-io/flock-api/handlers/members"
	"github.com/flock-io/flock-api/handlers/orgs"
	"github.com/flock-io/flock-api/handlers/system"
	"github.com/flock-io/flock-api/internal/buildinfo"
)

// Server implements every operation of the OpenAPI document; each embedded
// handler brings the operations of one resource.
type Server struct {
	*system.System
	*identity.Identity
	*orgs.Orgs
	*members.Members
	*apikeys.APIKeys
	*auditlog.AuditLog
}

var _ api.StrictServerInterface = (*Server)(nil)

// New wires every handler to pool; targets are the mounted targets that
// /v1/version reports.
func New(pool *pgxpool.Pool, targets []string) *Server {
	return &Server{
		System:   &system.System{DB: db.New(pool), Build: buildinfo.Get(), Targets: targets},
		Identity: &identity.Identity{Pool: pool},
		Orgs:     &orgs.Orgs{Pool: pool},
		Members:  &members.Members{Pool: pool},
		APIKeys:  &apikeys.APIKeys{Pool: pool},
		AuditLog: &auditlog.AuditLog{Pool: pool},
	}
}
