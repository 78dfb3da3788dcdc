// Package commands serves device commands: sending one, and reading what
// became of it. The handlers store commands; workers/commands sends them to
// devices and moves them along, and the ingester applies the devices'
// answers.
package commands

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/kv"
)

// Sender sends a command once the transaction that created it commits
// (workers/commands.Service).
type Sender interface {
	Announce(ctx context.Context, c db.Command)
}

// Commands implements the command operations of the OpenAPI document.
type Commands struct {
	Pool *pgxpool.Pool
	// Send sends new commands; nil leaves them pending until the device
	// next connects with a worker running.
	Send Sender
	// KV holds devices' newest reported states, which PostgreSQL receives
	// a moment later; nil reads PostgreSQL only.
	KV kv.Store
}

func convert(c db.Command) api.Command {
	return api.Command{
		Id: c.ID, DeviceId: c.DeviceID, FleetId: c.FleetID,
		Type: api.CommandType(c.Type), Service: c.Service, Status: api.CommandStatus(c.Status),
		CreatedAt: c.CreatedAt, ExpiresAt: c.ExpiresAt, DeliveredAt: c.DeliveredAt, CompletedAt: c.CompletedAt,
		Error:     c.Error,
		CreatedBy: api.Actor{Type: api.ActorType(c.CreatedByType), Id: c.CreatedByID, Label: c.CreatedByLabel},
	}
}
