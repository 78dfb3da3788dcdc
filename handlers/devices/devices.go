// Package devices serves the devices of an organisation.
package devices

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// Devices implements the device operations.
type Devices struct {
	Pool *pgxpool.Pool
}

// OnlineWindow is how recently a device must have reported to count as
// online. The MQTT connection state will refine this.
const OnlineWindow = 10 * time.Minute

// Device converts a device row.
func Device(d db.Device) (api.Device, error) {
	out := api.Device{Id: d.ID, OrgId: d.OrgID, FleetId: d.FleetID, Name: d.Name, DeviceType: d.DeviceType,
		Architecture: api.Architecture(d.Architecture), Tags: d.Tags, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt,
		LastSeenAt: d.LastSeenAt, Online: d.LastSeenAt != nil && time.Since(*d.LastSeenAt) < OnlineWindow}
	if out.Tags == nil {
		out.Tags = map[string]string{}
	}
	if d.PinnedReleaseID.Valid {
		out.PinnedReleaseId = &d.PinnedReleaseID.UUID
	}
	if d.LastSeenAt != nil {
		var rs api.ReportedState
		if err := json.Unmarshal(d.Reported, &rs); err != nil {
			return api.Device{}, fmt.Errorf("decode reported state of %s: %w", d.ID, err)
		}
		out.ReportedState = &rs
	}
	return out, nil
}
