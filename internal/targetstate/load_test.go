package targetstate_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/internal/targetstate"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

const services = `[{"name": "app", "environment": {"MODE": "release"},
  "images": {"amd64": {"image": "registry.example.com/app:1", "digest": "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}}]`

// A batch spanning fleets, pins and variables at every scope gives each
// device what loading it alone gives, chosen in the documented order.
func TestLoadBatchMatchesOneByOne(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	id := func(sql string, args ...any) uuid.UUID {
		t.Helper()
		var v uuid.UUID
		if err := pool.QueryRow(ctx, sql, args...).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	org := id(`INSERT INTO orgs (name) VALUES ('acme') RETURNING id`)
	fleet := func(name string) uuid.UUID {
		return id(`INSERT INTO fleets (org_id, name, architecture) VALUES ($1, $2, 'amd64') RETURNING id`, org, name)
	}
	release := func(fleet uuid.UUID, version, status string) uuid.UUID {
		return id(`INSERT INTO releases (org_id, fleet_id, version, status, services, finalized_at)
			VALUES ($1, $2, $3, $4, $5, CASE WHEN $4 = 'final' THEN clock_timestamp() END) RETURNING id`,
			org, fleet, version, status, services)
	}
	device := func(fleet, pin uuid.UUID) uuid.UUID {
		d := uuid.New()
		exec(`INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key, pinned_release_id)
			VALUES ($1, $2, $3, 'd', 'generic-amd64', 'amd64', decode(repeat('00', 32), 'hex'), $4)`,
			d, org, fleet, uuid.NullUUID{UUID: pin, Valid: pin != uuid.Nil})
		return d
	}
	tracking, pinned, empty := fleet("tracking"), fleet("pinned"), fleet("empty")
	old := release(tracking, "1", "final")
	latest := release(tracking, "2", "final")
	release(tracking, "3", "draft")
	p1 := release(pinned, "1", "final")
	release(pinned, "2", "final")
	exec(`UPDATE fleets SET release_policy = 'pinned', pinned_release_id = $2 WHERE id = $1`, pinned, p1)
	exec(`INSERT INTO config_variables (org_id, fleet_id, name, value) VALUES ($1, $2, 'LEVEL', 'fleet')`, org, tracking)
	exec(`INSERT INTO config_variables (org_id, fleet_id, service, name, value) VALUES ($1, $2, 'app', 'MODE', 'fleet-app')`, org, tracking)

	onLatest, onOld, onPin, onNothing := device(tracking, uuid.Nil), device(tracking, old), device(pinned, uuid.Nil), device(empty, uuid.Nil)
	exec(`INSERT INTO config_variables (org_id, fleet_id, device_id, name, value) VALUES ($1, $2, $3, 'LEVEL', 'device')`, org, tracking, onOld)

	ids := []uuid.UUID{onLatest, onOld, onPin, onNothing, uuid.New()}
	batch, err := targetstate.Load(ctx, pool, ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(batch) != 4 {
		t.Fatalf("%d states, want 4 (the unknown device left out)", len(batch))
	}
	wantRelease := map[uuid.UUID]uuid.UUID{onLatest: latest, onOld: old, onPin: p1, onNothing: uuid.Nil}
	for _, st := range batch {
		alone, err := targetstate.ForDevice(ctx, pool, st.DeviceId)
		if err != nil {
			t.Fatal(err)
		}
		if alone.Version != st.Version {
			t.Fatalf("device %s: batch version %s, alone %s", st.DeviceId, st.Version, alone.Version)
		}
		var got uuid.UUID
		if st.Release != nil {
			got = st.Release.Id
		}
		if got != wantRelease[st.DeviceId] {
			t.Fatalf("device %s runs %s, want %s", st.DeviceId, got, wantRelease[st.DeviceId])
		}
		switch st.DeviceId {
		case onLatest:
			if st.Variables["LEVEL"] != "fleet" || st.Services[0].Environment["MODE"] != "fleet-app" {
				t.Fatalf("fleet variables: %+v", st)
			}
		case onOld:
			if st.Variables["LEVEL"] != "device" || st.Services[0].Environment["LEVEL"] != "device" {
				t.Fatalf("device variable does not beat the fleet's: %+v", st)
			}
		case onPin:
			if len(st.Variables) != 0 || st.Services[0].Environment["MODE"] != "release" {
				t.Fatalf("another fleet's variables leaked: %+v", st)
			}
		}
	}

	if _, err := targetstate.ForDevice(ctx, pool, uuid.New()); !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("unknown device: %v, want pgx.ErrNoRows", err)
	}
	if _, err := targetstate.Load(ctx, pool, make([]uuid.UUID, targetstate.MaxBatch+1)); err == nil {
		t.Fatal("a batch over MaxBatch was accepted")
	}
}
