package deviceapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers/releases"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/targetstate"
)

// DeviceStateGet returns the target state: the release chosen by the device
// pin, else the fleet pin, else the fleet's newest final release; with
// If-None-Match equal to the current version, 304.
func (h *DeviceAPI) DeviceStateGet(ctx context.Context, req api.DeviceStateGetRequestObject) (api.DeviceStateGetResponseObject, error) {
	p := auth.AccessFrom(ctx).Principal
	ts, err := TargetState(ctx, db.New(h.Pool), p.DeviceID)
	if err != nil {
		return nil, err
	}
	etag := `"` + ts.Version + `"`
	if inm := req.Params.IfNoneMatch; inm != nil && matches(*inm, etag) {
		return api.DeviceStateGet304Response{Headers: api.DeviceStateGet304ResponseHeaders{ETag: &etag}}, nil
	}
	return api.DeviceStateGet200JSONResponse{Body: ts, Headers: api.DeviceStateGet200ResponseHeaders{ETag: &etag}}, nil
}

// TargetState computes a device's target state from the database.
func TargetState(ctx context.Context, q *db.Queries, deviceID uuid.UUID) (api.TargetState, error) {
	d, err := q.DeviceGet(ctx, deviceID)
	if err != nil {
		return api.TargetState{}, fmt.Errorf("load device %s: %w", deviceID, err)
	}
	fleet, err := q.FleetGet(ctx, d.FleetID)
	if err != nil {
		return api.TargetState{}, fmt.Errorf("load fleet %s: %w", d.FleetID, err)
	}
	var row db.Release
	switch {
	case d.PinnedReleaseID.Valid:
		row, err = q.ReleaseGet(ctx, d.PinnedReleaseID.UUID)
	case fleet.PinnedReleaseID.Valid:
		row, err = q.ReleaseGet(ctx, fleet.PinnedReleaseID.UUID)
	default:
		row, err = q.ReleaseLatestFinal(ctx, fleet.ID)
	}
	var rel *targetstate.Release
	switch {
	case errors.Is(err, pgx.ErrNoRows): // nothing to run yet
	case err != nil:
		return api.TargetState{}, fmt.Errorf("choose release of %s: %w", deviceID, err)
	default:
		rel = &targetstate.Release{ID: row.ID, Version: row.Version}
		if err := json.Unmarshal(row.Services, &rel.Services); err != nil {
			return api.TargetState{}, fmt.Errorf("decode services of release %s: %w", row.ID, err)
		}
	}
	vars, err := q.VariablesForDevice(ctx, db.VariablesForDeviceParams{FleetID: fleet.ID, DeviceID: d.ID})
	if err != nil {
		return api.TargetState{}, fmt.Errorf("load variables of %s: %w", deviceID, err)
	}
	return targetstate.Compute(d.ID, d.Architecture, rel, vars, releases.Image), nil
}

// matches implements If-None-Match (RFC 9110 §13.1.2): a list of entity
// tags, weak comparison, or *.
func matches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag {
			return true
		}
	}
	return false
}

// DeviceStateUpdate stores the reported state and marks the device seen.
func (h *DeviceAPI) DeviceStateUpdate(ctx context.Context, req api.DeviceStateUpdateRequestObject) (api.DeviceStateUpdateResponseObject, error) {
	p := auth.AccessFrom(ctx).Principal
	raw, err := json.Marshal(req.Body)
	if err != nil {
		return nil, fmt.Errorf("encode reported state: %w", err)
	}
	b := req.Body
	var running uuid.NullUUID
	if b.RunningReleaseId != nil {
		running = uuid.NullUUID{UUID: *b.RunningReleaseId, Valid: true}
	}
	str := func(s *string) string {
		if s == nil {
			return ""
		}
		return *s
	}
	if err := db.New(h.Pool).DeviceReport(ctx, db.DeviceReportParams{ID: p.DeviceID, Reported: raw,
		RunningReleaseID: running, OsVersion: str(b.OsVersion), AgentVersion: str(b.AgentVersion)}); err != nil {
		return nil, fmt.Errorf("store reported state of %s: %w", p.DeviceID, err)
	}
	return api.DeviceStateUpdate204Response{}, nil
}
