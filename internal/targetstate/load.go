package targetstate

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// MaxBatch is the most devices Load takes at once; callers page larger sets.
const MaxBatch = 1000

// ForDevice computes one device's target state: what GET /device/v1/state
// serves. A device that does not exist is pgx.ErrNoRows.
func ForDevice(ctx context.Context, pool *pgxpool.Pool, id uuid.UUID) (api.TargetState, error) {
	states, err := Load(ctx, pool, []uuid.UUID{id})
	if err != nil {
		return api.TargetState{}, err
	}
	if len(states) == 0 {
		return api.TargetState{}, fmt.Errorf("load device %s: %w", id, pgx.ErrNoRows)
	}
	return states[0], nil
}

// Load computes the target states of a batch of devices (at most MaxBatch),
// in no particular order; devices that do not exist are left out. It is the
// one way both the state endpoint and the nudges compute states, so the
// version a nudge announces is the ETag the device then gets.
//
// Every input is read in one read-only repeatable-read transaction: a state
// never mixes a release from before a change with variables from after it.
// A batch costs four queries however many devices and fleets it spans.
func Load(ctx context.Context, pool *pgxpool.Pool, ids []uuid.UUID) ([]api.TargetState, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	if len(ids) > MaxBatch {
		return nil, fmt.Errorf("target states of %d devices at once; the most is %d", len(ids), MaxBatch)
	}
	var out []api.TargetState
	err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly},
		func(tx pgx.Tx) error {
			var err error
			out, err = load(ctx, db.New(tx), ids)
			return err
		})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func load(ctx context.Context, q *db.Queries, ids []uuid.UUID) ([]api.TargetState, error) {
	choices, err := q.TargetChoices(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("choose releases of %d devices: %w", len(ids), err)
	}
	if len(choices) == 0 {
		return nil, nil
	}
	var relIDs, fleetIDs, deviceIDs []uuid.UUID
	seen := map[uuid.UUID]bool{}
	for _, c := range choices {
		deviceIDs = append(deviceIDs, c.ID)
		if !seen[c.FleetID] {
			seen[c.FleetID] = true
			fleetIDs = append(fleetIDs, c.FleetID)
		}
		if c.ReleaseID.Valid && !seen[c.ReleaseID.UUID] {
			seen[c.ReleaseID.UUID] = true
			relIDs = append(relIDs, c.ReleaseID.UUID)
		}
	}

	releases := map[uuid.UUID]*Release{}
	if len(relIDs) > 0 {
		rows, err := q.TargetReleases(ctx, relIDs)
		if err != nil {
			return nil, fmt.Errorf("load %d releases: %w", len(relIDs), err)
		}
		for _, r := range rows {
			rel := &Release{ID: r.ID, Version: r.Version}
			if err := json.Unmarshal(r.Services, &rel.Services); err != nil {
				return nil, fmt.Errorf("decode services of release %s: %w", r.ID, err)
			}
			releases[r.ID] = rel
		}
	}

	vars, err := q.TargetVariables(ctx, db.TargetVariablesParams{FleetIds: fleetIDs, DeviceIds: deviceIDs})
	if err != nil {
		return nil, fmt.Errorf("load variables of %d devices: %w", len(ids), err)
	}
	fleetVars := map[uuid.UUID][]db.ConfigVariable{}
	deviceVars := map[uuid.UUID][]db.ConfigVariable{}
	for _, v := range vars {
		if v.DeviceID.Valid {
			deviceVars[v.DeviceID.UUID] = append(deviceVars[v.DeviceID.UUID], v)
		} else {
			fleetVars[v.FleetID] = append(fleetVars[v.FleetID], v)
		}
	}

	out := make([]api.TargetState, 0, len(choices))
	for _, c := range choices {
		var rel *Release // nil: nothing to run yet
		if c.ReleaseID.Valid {
			rel = releases[c.ReleaseID.UUID]
		}
		own := append([]db.ConfigVariable(nil), fleetVars[c.FleetID]...)
		for _, v := range deviceVars[c.ID] {
			if v.FleetID == c.FleetID { // a device's variables move with it
				own = append(own, v)
			}
		}
		out = append(out, Compute(c.ID, c.Architecture, rel, own))
	}
	return out, nil
}
