package commands

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/bus"
)

// What a device answers on its command-results channel.
const (
	ResultReceived  = "received"
	ResultSucceeded = "succeeded"
	ResultFailed    = "failed"
)

// Result is one answer of a device about one of its commands.
type Result struct {
	Device uuid.UUID
	ID     uuid.UUID
	// Status is ResultReceived, ResultSucceeded or ResultFailed.
	Status string
	Error  string
	// At is when Flock received the answer; the device's own ts is not
	// trusted for ordering or display, its clock may be off.
	At time.Time
}

// ApplyResults applies devices' answers in order, each only when it moves
// its command forward, and publishes one event per change, in one
// transaction: the events go out before the commit, so a failure anywhere
// leaves the answers to be applied again, and the copies of an event that
// a retry publishes carry the same id. Answers that change nothing (a
// redelivery, an answer after expiry, another device's command) publish
// nothing. It returns how many answers changed a command.
func ApplyResults(ctx context.Context, pool *pgxpool.Pool, publish func(context.Context, ...bus.Record) error, results []Result) (int, error) {
	if len(results) == 0 {
		return 0, nil
	}
	// Rows are locked in command id order, as every writer of several
	// commands does: two ingester connections applying the received and
	// the succeeded of the same commands deadlocked otherwise. The sort is
	// stable, so each command's answers keep their order.
	results = slices.Clone(results)
	slices.SortStableFunc(results, func(a, b Result) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	var changed []db.Command
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		changed = changed[:0]
		q := db.New(tx)
		for _, r := range results {
			status, ok := resultStatus(r.Status)
			if !ok {
				continue
			}
			p := db.CommandApplyResultParams{ID: r.ID, DeviceID: r.Device, Status: status, At: r.At.UTC()}
			if status == StatusFailed {
				e := r.Error
				if e == "" {
					e = "the device reported a failure without a reason"
				}
				p.Error = &e
			}
			c, err := q.CommandApplyResult(ctx, p)
			if errors.Is(err, pgx.ErrNoRows) {
				continue
			}
			if err != nil {
				return fmt.Errorf("apply %s of command %s: %w", r.Status, r.ID, err)
			}
			changed = append(changed, c)
		}
		if len(changed) == 0 {
			return nil
		}
		recs := make([]bus.Record, len(changed))
		for i, c := range changed {
			recs[i] = EventRecord(c)
		}
		return publish(ctx, recs...)
	})
	if err != nil {
		return 0, fmt.Errorf("apply command results: %w", err)
	}
	return len(changed), nil
}

// resultStatus is the command status an answer moves to.
func resultStatus(s string) (string, bool) {
	switch s {
	case ResultReceived:
		return StatusDelivered, true
	case ResultSucceeded:
		return StatusSucceeded, true
	case ResultFailed:
		return StatusFailed, true
	}
	return "", false
}
