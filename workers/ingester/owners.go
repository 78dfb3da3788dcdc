package ingester

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/hashicorp/golang-lru/v2/expirable"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
)

// A topic names only the device; the telemetry store and Kafka records also
// need its org and fleet. They are looked up in PostgreSQL once per device
// and cached briefly: a device moved to another fleet is seen there within
// ownerTTL, and a deleted device's messages are dropped within it.
const (
	ownerTTL     = time.Minute
	ownerEntries = 200_000
)

type owner struct {
	org, fleet uuid.UUID
	found      bool
}

type owners struct {
	pool  *pgxpool.Pool
	cache *expirable.LRU[uuid.UUID, owner]

	mu      sync.Mutex
	touched *expirable.LRU[uuid.UUID, time.Time]
}

func newOwners(pool *pgxpool.Pool) *owners {
	return &owners{
		pool:    pool,
		cache:   expirable.NewLRU[uuid.UUID, owner](ownerEntries, nil, ownerTTL),
		touched: expirable.NewLRU[uuid.UUID, time.Time](ownerEntries, nil, touchEvery),
	}
}

// resolve returns the owners of the devices that exist, with one query for
// the ones not cached.
func (o *owners) resolve(ctx context.Context, ids []uuid.UUID) (map[uuid.UUID]owner, error) {
	out := make(map[uuid.UUID]owner, len(ids))
	var missing []uuid.UUID
	for _, id := range ids {
		if _, ok := out[id]; ok {
			continue
		}
		if ow, ok := o.cache.Get(id); ok {
			if ow.found {
				out[id] = ow
			}
			continue
		}
		out[id] = owner{} // placeholder so the id is asked once
		missing = append(missing, id)
	}
	for _, id := range missing {
		delete(out, id)
	}
	if len(missing) == 0 {
		return out, nil
	}
	rows, err := db.New(o.pool).DeviceOwners(ctx, missing)
	if err != nil {
		return nil, fmt.Errorf("look up %d devices: %w", len(missing), err)
	}
	for _, r := range rows {
		ow := owner{org: r.OrgID, fleet: r.FleetID, found: true}
		o.cache.Add(r.ID, ow)
		out[r.ID] = ow
	}
	for _, id := range missing {
		if _, ok := out[id]; !ok {
			o.cache.Add(id, owner{})
		}
	}
	return out, nil
}

// shouldTouch reports whether the device's last_seen_at is due a refresh,
// and if so counts it as refreshed.
func (o *owners) shouldTouch(id uuid.UUID, now time.Time) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if _, ok := o.touched.Get(id); ok {
		return false
	}
	o.touched.Add(id, now)
	return true
}
