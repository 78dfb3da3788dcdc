// Package devices serves the devices of an organisation.
package devices

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/flock-io/flock-api/internal/audit"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/livestate"
	"github.com/flock-io/flock-api/internal/telemetry"
	"github.com/flock-io/flock-api/workers/nudger"
)

// Devices implements the device operations.
type Devices struct {
	Pool *pgxpool.Pool
	// KV is the live-state store the ingester writes reported states to;
	// when nil, devices show the reported state PostgreSQL holds.
	KV kv.Store
	// Telemetry holds connectivity histories; when nil, this process keeps
	// none and every history is empty.
	Telemetry telemetry.Store
	// Nudge hears of committed changes to a device's target; nil: none.
	Nudge nudger.Notifier
	// PublicURL is a device's public URL (FLOCK_DEVICE_URL_DOMAIN); nil
	// when the deployment has no device URL domain.
	PublicURL func(uuid.UUID) string
	// Audit records a public URL's enabling beside the update's own event.
	Audit *audit.Recorder
}

// OnlineWindow is how recently a device that never connected over MQTT must
// have reported over REST to count as online.
const OnlineWindow = 10 * time.Minute

// Online decides whether a device is online at now: a device that has
// connected over MQTT is online while connected (the ingester orders its
// connect and disconnect events); any other while it reports over REST. The
// device list's online filter (queries/devices.sql) is the same rule.
func Online(d db.Device, now time.Time) bool {
	return online(d.ConnectionKey, d.Connected, d.LastSeenAt, now)
}

func online(connectionKey *int64, connected bool, lastSeen *time.Time, now time.Time) bool {
	if connectionKey != nil {
		return connected
	}
	return lastSeen != nil && now.Sub(*lastSeen) < OnlineWindow
}

// Device converts a device row, with the reported state PostgreSQL holds.
func Device(d db.Device) (api.Device, error) {
	return withLive(d, nil)
}

// withLive converts a device row; live is the device's state in the KV store
// (nil when there is none), shown instead of PostgreSQL's when it arrived
// later.
func withLive(d db.Device, live *livestate.State) (api.Device, error) {
	out := api.Device{Id: d.ID, OrgId: d.OrgID, FleetId: d.FleetID, Name: d.Name, DeviceType: d.DeviceType,
		Architecture: api.Architecture(d.Architecture), Tags: d.Tags, CreatedAt: d.CreatedAt, UpdatedAt: d.UpdatedAt,
		LastSeenAt: d.LastSeenAt, Online: Online(d, time.Now()),
		PublicUrl: api.PublicUrl{Enabled: d.PublicUrlEnabled, Port: int(d.PublicUrlPort)}}
	if out.Tags == nil {
		out.Tags = map[string]string{}
	}
	if d.PinnedReleaseID.Valid {
		out.PinnedReleaseId = &d.PinnedReleaseID.UUID
	}
	rs, seen, err := shown(d.ID, d.Reported, d.ReportedAt, d.ReportedSeq, d.LastSeenAt, live)
	if err != nil {
		return api.Device{}, err
	}
	out.ReportedState, out.LastSeenAt = rs, seen
	return out, nil
}

// shown decides the reported state a device shows and when it was last
// seen, for withLive and the device list alike: PostgreSQL's state
// (reported, when reportedAt says the device reported) and lastSeen, or
// live's state when it is newer.
func shown(id uuid.UUID, reported []byte, reportedAt *time.Time, reportedSeq *int64, lastSeen *time.Time,
	live *livestate.State) (*api.ReportedState, *time.Time, error) {
	var stored *api.ReportedState
	if reportedAt != nil {
		var rs api.ReportedState
		if err := json.Unmarshal(reported, &rs); err != nil {
			return nil, nil, fmt.Errorf("decode reported state of %s: %w", id, err)
		}
		stored = &rs
	}
	if live == nil {
		return stored, lastSeen, nil
	}
	// The ingester validated it against the AsyncAPI schema, which is the
	// OpenAPI one. The KV store holds MQTT's newest state before the
	// ingester's batch reaches PostgreSQL; whichever has the higher seq is
	// the newer state.
	var rs api.ReportedState
	if err := json.Unmarshal(live.State, &rs); err != nil {
		slog.Warn("live state of device unreadable; showing the stored one", "device", id, "error", err.Error())
		return stored, lastSeen, nil
	}
	if reportedSeq != nil && *reportedSeq >= rs.Seq {
		return stored, lastSeen, nil
	}
	if at := live.ReceivedAt; lastSeen == nil || at.After(*lastSeen) {
		lastSeen = &at
	}
	return &rs, lastSeen, nil
}

// device converts one device row with its live state.
func (h *Devices) device(ctx context.Context, d db.Device) (api.Device, error) {
	live := h.liveStates(ctx, []uuid.UUID{d.ID})
	out, err := withLive(d, live[d.ID])
	if err == nil && h.PublicURL != nil {
		u := h.PublicURL(d.ID)
		out.PublicUrl.Url = &u
	}
	return out, err
}

// liveStates reads the KV store's states of devices in one round trip. The
// KV store only speeds up what devices report; when it fails, devices show
// PostgreSQL's copy rather than the request failing.
func (h *Devices) liveStates(ctx context.Context, ids []uuid.UUID) map[uuid.UUID]*livestate.State {
	if h.KV == nil || len(ids) == 0 {
		return nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = livestate.StateKey(id)
	}
	vals, err := h.KV.MGet(ctx, keys...)
	if err != nil {
		slog.WarnContext(ctx, "read live device states; showing the stored ones", "devices", len(ids), "error", err.Error())
		return nil
	}
	out := make(map[uuid.UUID]*livestate.State, len(ids))
	for i, v := range vals {
		if v == nil {
			continue
		}
		var s livestate.State
		if err := json.Unmarshal(v, &s); err != nil {
			slog.WarnContext(ctx, "live state of device unreadable; showing the stored one", "device", ids[i], "error", err.Error())
			continue
		}
		out[ids[i]] = &s
	}
	return out
}
