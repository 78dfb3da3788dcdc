package ingester_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
	"github.com/flock-io/flock-api/workers/scheduler/schedulertest"
)

// Two ingester connections write overlapping batches at once: a shared
// subscription hands a device's messages to either. Every batch update of
// devices locks its rows in id order, so two batches naming the same
// devices in opposite orders never deadlock (PostgreSQL would abort one
// after deadlock_timeout, and the ingester would stall and retry).
func TestBatchUpdatesLockInOneOrder(t *testing.T) {
	pool := pgtest.Pool(t)
	ctx := t.Context()
	f, err := schedulertest.Seed(ctx, pool, 200, nil)
	if err != nil {
		t.Fatal(err)
	}
	q := db.New(pool)
	batch := func(ids []uuid.UUID, round int) []func() error {
		n := len(ids)
		at := make([]time.Time, n)
		seqs, keys := make([]int64, n), make([]int64, n)
		conn := make([]bool, n)
		reported, rel, osv, agent := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		for i := range ids {
			at[i] = time.Now().Add(time.Duration(round) * time.Millisecond)
			seqs[i], keys[i] = int64(round+1), int64(round+1)
			conn[i] = round%2 == 0
			reported[i] = fmt.Sprintf(`{"seq":%d}`, round+1)
			osv[i] = fmt.Sprint(round)
		}
		return []func() error{
			func() error {
				return q.DevicesApplyState(ctx, db.DevicesApplyStateParams{Ids: ids, Seqs: seqs, Reported: reported,
					RunningReleaseIds: rel, OsVersions: osv, AgentVersions: agent, Ats: at})
			},
			func() error { return q.DevicesTouch(ctx, db.DevicesTouchParams{Ids: ids, Ats: at}) },
			func() error {
				_, err := q.DevicesApplyConnectivity(ctx, db.DevicesApplyConnectivityParams{Ids: ids, Keys: keys, Connected: conn, Ats: at})
				return err
			},
		}
	}
	for round := range 20 {
		forward := slices.Clone(f.Devices)
		backward := slices.Clone(f.Devices)
		slices.Reverse(backward)
		a, b := batch(forward, round), batch(backward, round)
		for part := range a {
			var wg sync.WaitGroup
			errs := make([]error, 2)
			wg.Go(func() { errs[0] = a[part]() })
			wg.Go(func() { errs[1] = b[part]() })
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					t.Fatalf("round %d, update %d: %v", round, part, err)
				}
			}
		}
	}
}
