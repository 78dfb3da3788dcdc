// Package summary serves the device counts of fleets and organisations:
// online, offline and never connected, per running release, per update
// status, and per state in each group of the rollouts that have not ended.
//
// It reads counters, not devices: statement-level triggers on devices and
// rollout_devices append each change's net effect to delta tables in the
// change's own transaction, the janitor folds the deltas into the counts
// (workers/janitor), and a read adds the two (migrations/00011_device_summary.sql).
// A fleet of any size costs a few dozen rows.
package summary

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// Summary implements the summary operations.
type Summary struct {
	Pool *pgxpool.Pool
}

// FleetSummaryGet returns a fleet's counts; the guard has checked that the
// fleet is the caller's.
func (h *Summary) FleetSummaryGet(ctx context.Context, req api.FleetSummaryGetRequestObject) (api.FleetSummaryGetResponseObject, error) {
	var out api.FleetSummary
	err := h.read(ctx, func(q *db.Queries) error {
		fleets, err := Read(ctx, q, []uuid.UUID{req.FleetId})
		if err != nil {
			return err
		}
		out = fleets[0]
		return nil
	})
	if err != nil {
		return nil, err
	}
	return api.FleetSummaryGet200JSONResponse(out), nil
}

// OrgSummaryGet returns the counts of every fleet of an organisation and
// their totals, all of one moment.
func (h *Summary) OrgSummaryGet(ctx context.Context, req api.OrgSummaryGetRequestObject) (api.OrgSummaryGetResponseObject, error) {
	out := api.OrgSummary{OrgId: req.OrgId}
	err := h.read(ctx, func(q *db.Queries) error {
		ids, err := q.SummaryOrgFleets(ctx, req.OrgId)
		if err != nil {
			return fmt.Errorf("list fleets of org %s: %w", req.OrgId, err)
		}
		fleets, err := Read(ctx, q, ids)
		if err != nil {
			return err
		}
		out.Fleets = fleets
		return nil
	})
	if err != nil {
		return nil, err
	}
	out.Counts = Totals(out.Fleets)
	return api.OrgSummaryGet200JSONResponse(out), nil
}

// read runs f in a read-only REPEATABLE READ transaction: the counts, the
// deltas and the rollouts are read at one moment, so a compaction or a
// change committing between two of the reads counts neither twice nor not
// at all.
func (h *Summary) read(ctx context.Context, f func(q *db.Queries) error) error {
	tx, err := h.Pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin summary read: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if err := f(db.New(tx)); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
