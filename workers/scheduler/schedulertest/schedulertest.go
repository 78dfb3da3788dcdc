// Package schedulertest makes what the scheduler's tests and bench/rollout
// need: a fleet of devices with the release they run and a new one, a
// rollout started as rollout:start starts one (selection, group plan, the
// fleet held on what it ran), and device records as the ingester
// publishes them.
package schedulertest

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/rollout"
	"github.com/flock-io/flock-api/internal/rolloutstore"
)

const services = `[{"name": "app", "images": {"amd64": {"image": "registry.example.com/app:%d", "digest": "sha256:%064d"}}}]`

// Fleet is a seeded fleet.
type Fleet struct {
	Org, ID uuid.UUID
	// Old is the release the devices run; New the one to roll out
	// (created after Old, so it is the fleet's newest).
	Old, New uuid.UUID
	Devices  []uuid.UUID
}

// Seed makes an organisation with a fleet of n devices tracking its latest
// release, Old, and a newer final release New. tags, when not nil, gives
// device i its tags.
func Seed(ctx context.Context, pool *pgxpool.Pool, n int, tags func(i int) map[string]string) (Fleet, error) {
	var org, fleet uuid.UUID
	if err := pool.QueryRow(ctx, `INSERT INTO orgs (name) VALUES ('acme') RETURNING id`).Scan(&org); err != nil {
		return Fleet{}, fmt.Errorf("seed an organisation: %w", err)
	}
	if err := pool.QueryRow(ctx, `INSERT INTO fleets (org_id, name, architecture) VALUES ($1, 'sensors', 'amd64') RETURNING id`,
		org).Scan(&fleet); err != nil {
		return Fleet{}, fmt.Errorf("seed a fleet: %w", err)
	}
	return Populate(ctx, pool, org, fleet, n, tags)
}

// Populate gives an existing fleet (of architecture amd64) the releases Old
// and New and n devices running Old, as Seed does.
func Populate(ctx context.Context, pool *pgxpool.Pool, org, fleet uuid.UUID, n int, tags func(i int) map[string]string) (Fleet, error) {
	f := Fleet{Org: org, ID: fleet}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for i, rel := range []*uuid.UUID{&f.Old, &f.New} {
			if err := tx.QueryRow(ctx, `INSERT INTO releases (org_id, fleet_id, version, status, services, finalized_at)
				VALUES ($1, $2, $3, 'final', $4, now() + make_interval(secs => $5)) RETURNING id`,
				f.Org, f.ID, fmt.Sprintf("1.%d", i), fmt.Sprintf(services, i, i), i).Scan(rel); err != nil {
				return err
			}
		}
		f.Devices = make([]uuid.UUID, n)
		tagsJSON := make([][]byte, n)
		for i := range f.Devices {
			f.Devices[i] = uuid.New()
			tagsJSON[i] = []byte("{}")
			if t := tagsOf(tags, i); t != nil {
				tagsJSON[i], _ = json.Marshal(t)
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key, tags, running_release_id)
			SELECT d.id, $1, $2, 'device-' || d.i, 'generic-amd64', 'amd64', decode(repeat('00', 32), 'hex'), d.tags::jsonb, $5
			FROM unnest($3::uuid[], $4::text[]) WITH ORDINALITY AS d(id, tags, i)`, f.Org, f.ID, f.Devices, texts(tagsJSON), f.Old)
		return err
	})
	if err != nil {
		return Fleet{}, fmt.Errorf("seed a fleet of %d devices: %w", n, err)
	}
	if _, err := pool.Exec(ctx, "ANALYZE devices"); err != nil {
		return Fleet{}, err
	}
	return f, nil
}

func tagsOf(tags func(int) map[string]string, i int) map[string]string {
	if tags == nil {
		return nil
	}
	return tags(i)
}

func texts(bs [][]byte) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = string(b)
	}
	return out
}

// Rollout is what Start starts.
type Rollout struct {
	Spec       rollout.Spec
	Groups     []rollout.GroupSpec
	Membership string            // default snapshot
	Tags       map[string]string // the selector's tags
}

// Start creates a rollout of f.New and starts it with rolloutstore.Start,
// as rollout:start does: the fleet's devices placed in their groups as
// pending, the fleet held on what it ran (Old), group 0 running.
func Start(ctx context.Context, pool *pgxpool.Pool, f Fleet, r Rollout) (uuid.UUID, error) {
	var id uuid.UUID
	if r.Membership == "" {
		r.Membership = "snapshot"
	}
	spec, err := json.Marshal(r.Spec)
	if err != nil {
		return id, err
	}
	tags := r.Tags
	if tags == nil {
		tags = map[string]string{}
	}
	selector, _ := json.Marshal(map[string]any{"tags": tags})
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		ro, err := q.RolloutCreate(ctx, db.RolloutCreateParams{OrgID: f.Org, FleetID: f.ID, ReleaseID: f.New,
			Membership: r.Membership, Selector: selector, Spec: spec})
		if err != nil {
			return fmt.Errorf("create: %w", err)
		}
		id = ro.ID
		for i, g := range r.Groups {
			gs, _ := json.Marshal(g)
			if err := q.RolloutGroupCreate(ctx, db.RolloutGroupCreateParams{RolloutID: id, Idx: int32(i),
				Name: fmt.Sprintf("group-%d", i), Spec: gs}); err != nil {
				return fmt.Errorf("group %d: %w", i, err)
			}
		}
		_, err = rolloutstore.Start(ctx, q, ro, "track_latest", uuid.NullUUID{UUID: f.Old, Valid: true}, "test")
		return err
	})
	if err != nil {
		return id, fmt.Errorf("start a rollout: %w", err)
	}
	if _, err := pool.Exec(ctx, "ANALYZE rollout_devices"); err != nil {
		return id, err
	}
	return id, nil
}

// Service is one service of a report: "app" runs, "app=exited" does not.
type Service = events.ServiceStatus

// Running is a service running.
func Running(name string) Service { return Status(name, events.ServiceStateRunning) }

// Status is a service in a state.
func Status(name string, st events.ServiceState) Service { return Service{Name: name, Status: &st} }

// Locked is a service an update lock holds.
func Locked(name string) Service {
	s := Running(name)
	s.UpdateLocked = true
	return s
}

// Report is the state record of a device running release (uuid.Nil: none)
// with services, sent with seq at at.
func Report(f Fleet, device uuid.UUID, seq int, release uuid.UUID, at time.Time, svcs ...Service) bus.Record {
	st := &events.ReportedState{Seq: seq, Services: svcs}
	if release != uuid.Nil {
		st.RunningReleaseId = release.String()
	}
	b, _ := json.Marshal(events.DeviceStateRecord{DeviceId: device.String(), OrgId: f.Org.String(), FleetId: f.ID.String(),
		ReceivedAt: at.UTC().Format(time.RFC3339Nano), State: st})
	return bus.Record{Topic: bus.TopicDeviceState, Key: []byte(device.String()), Value: b}
}

// Event is an update event of a device about release.
func Event(f Fleet, device uuid.UUID, typ events.UpdateEventType, release uuid.UUID, at time.Time) bus.Record {
	b, _ := json.Marshal(events.DeviceEventRecord{DeviceId: device.String(), OrgId: f.Org.String(), FleetId: f.ID.String(),
		ReceivedAt: at.UTC().Format(time.RFC3339Nano), Event: &events.UpdateEvent{Id: uuid.NewString(),
			Ts: at.UTC().Format(time.RFC3339Nano), ReservedType: &typ, ReleaseId: release.String()}})
	return bus.Record{Topic: bus.TopicDeviceEvents, Key: []byte(device.String()), Value: b}
}

// Disconnect is a device's connection ending at at.
func Disconnect(f Fleet, device uuid.UUID, conn int, at time.Time) bus.Record {
	ev := events.ConnectivityEventDisconnected
	b, _ := json.Marshal(events.ConnectivityRecord{DeviceId: device.String(), OrgId: f.Org.String(), FleetId: f.ID.String(),
		Event: &ev, ConnectionSeq: conn, At: at.UTC().Format(time.RFC3339Nano)})
	return bus.Record{Topic: bus.TopicDeviceConnectivity, Key: []byte(device.String()), Value: b}
}
