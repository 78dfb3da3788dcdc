package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/sethvargo/go-retry"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/rollout"
)

// A batch that fails is tried again this many times, backing off from
// batchRetryBase up to batchRetryMax (a deadlock with an action of the
// API, PostgreSQL restarting); then the consumer stops and the process
// with it, leaving the batch uncommitted for whoever takes the partition.
const (
	batchRetries   = 8
	batchRetryBase = 50 * time.Millisecond
	batchRetryMax  = 5 * time.Second
)

// Consume applies device reports until ctx is cancelled (nil) or a batch
// cannot be applied (its error).
func (s *Scheduler) Consume(ctx context.Context) error {
	err := s.bus.Consume(ctx, s.cfg.Group, Topics, s.handle,
		bus.OnAssigned(func(map[string][]int32) { s.inGroup.Store(true) }),
		bus.OnLost(func() { s.inGroup.Store(false) }),
		bus.SessionTimeout(s.cfg.SessionTimeout))
	s.inGroup.Store(false)
	if errors.Is(err, bus.ErrClosed) && ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("scheduler: %w", err)
	}
	return nil
}

// handle is the consumer's handler: one transaction per batch, committed
// before the bus commits the batch's offsets.
func (s *Scheduler) handle(ctx context.Context, recs []bus.Record) error {
	start := time.Now()
	for _, r := range recs {
		s.m.records.WithLabelValues(r.Topic).Inc()
	}
	ins, bad := Decode(recs)
	if bad > 0 {
		// A record no retry can fix: counted, not fatal.
		s.m.undecodable.Add(float64(bad))
		s.log.Warn("scheduler dropped device records that do not decode", "records", bad)
	}
	if len(ins) == 0 {
		return nil
	}
	var res applied
	backoff := retry.WithMaxRetries(batchRetries, retry.WithCappedDuration(batchRetryMax, retry.NewExponential(batchRetryBase)))
	err := retry.Do(ctx, backoff, func(ctx context.Context) error {
		var err error
		res, err = s.apply(ctx, ins)
		if err != nil && ctx.Err() == nil {
			s.m.batchRetries.Inc()
			s.log.Warn("scheduler: applying a batch of reports failed; trying again", "records", len(ins), "error", err.Error())
			return retry.RetryableError(err)
		}
		return err
	})
	s.m.batchSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		return err
	}
	s.m.changed.Add(float64(res.changed))
	s.m.joined.Add(float64(res.joined))
	if res.changed > 0 || res.joined > 0 {
		s.poke()
	}
	return nil
}

// applied is what a batch did.
type applied struct{ changed, joined int }

// row is one rollout_devices row of a batch, with its rollout's release.
type row struct {
	rollout  uuid.UUID
	d        rollout.Device
	release  uuid.UUID
	previous uuid.UUID
	timing   rollout.Timing
	changed  bool
}

// apply runs a batch in one transaction.
func (s *Scheduler) apply(ctx context.Context, ins []input) (applied, error) {
	var res applied
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		ids := make([]uuid.UUID, 0, len(ins))
		for i, in := range ins {
			if i == 0 || in.device != ins[i-1].device {
				ids = append(ids, in.device)
			}
		}
		rows, err := s.lockRows(ctx, q, ids)
		if err != nil {
			return err
		}
		byDevice := make(map[uuid.UUID][]*row, len(rows))
		for _, r := range rows {
			byDevice[r.d.ID] = append(byDevice[r.d.ID], r)
		}
		var strangers []input // reports of devices in no active rollout
		for _, in := range ins {
			rs := byDevice[in.device]
			if len(rs) == 0 && in.kind == kindReport {
				strangers = append(strangers, in)
			}
			for _, r := range rs {
				if applyInput(r, in) {
					r.changed = true
				}
			}
		}
		if res.changed, err = writeRows(ctx, q, rows, s.cfg.Now()); err != nil {
			return err
		}
		if len(strangers) > 0 {
			if res.joined, err = s.join(ctx, q, strangers); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return applied{}, fmt.Errorf("apply %d device records: %w", len(ins), err)
	}
	return res, nil
}

// lockRows loads and locks the devices' rows in active rollouts.
func (s *Scheduler) lockRows(ctx context.Context, q *db.Queries, ids []uuid.UUID) ([]*row, error) {
	dbRows, err := q.SchedulerDevicesForUpdate(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("lock rollout devices: %w", err)
	}
	timings := map[uuid.UUID]rollout.Timing{}
	out := make([]*row, len(dbRows))
	for i, r := range dbRows {
		t, ok := timings[r.RolloutID]
		if !ok {
			var spec rollout.Spec
			if err := json.Unmarshal(r.Spec, &spec); err != nil {
				return nil, fmt.Errorf("rollout %s: spec: %w", r.RolloutID, err)
			}
			t = rollout.Timing{Settle: spec.Settle()}
			timings[r.RolloutID] = t
		}
		out[i] = &row{rollout: r.RolloutID, release: r.ReleaseID, previous: r.PreviousReleaseID.UUID, timing: t,
			d: rollout.Device{ID: r.DeviceID, State: r.State, Reason: r.Reason, Deadline: deref(r.Deadline),
				HealthySince: deref(r.HealthySince), LastSeq: r.LastSeq}}
	}
	return out, nil
}

// applyInput applies one record to one row, then what the time it
// happened at does (a device that settles at once, or reports past its
// deadline), and says whether the row changed.
func applyInput(r *row, in input) bool {
	var changed bool
	switch in.kind {
	case kindReport:
		r.d, changed = rollout.ApplyReport(r.d, in.report, r.release, r.previous, in.at)
	case kindEvent:
		r.d, changed = rollout.ApplyEvent(r.d, in.event, r.release, in.about, in.detail)
	case kindDisconnect:
		r.d, changed = rollout.DisconnectedAt(r.d, in.at)
	}
	var ticked bool
	r.d, ticked = rollout.Tick(r.d, r.timing, in.at)
	return changed || ticked
}

// writeRows writes the changed rows back in one statement.
func writeRows(ctx context.Context, q *db.Queries, rows []*row, now time.Time) (int, error) {
	p := db.SchedulerDevicesUpdateParams{Now: now}
	for _, r := range rows {
		if !r.changed {
			continue
		}
		p.RolloutIds = append(p.RolloutIds, r.rollout)
		p.DeviceIds = append(p.DeviceIds, r.d.ID)
		p.States = append(p.States, r.d.State)
		p.Reasons = append(p.Reasons, r.d.Reason)
		p.Deadlines = append(p.Deadlines, r.d.Deadline)
		p.HealthySince = append(p.HealthySince, r.d.HealthySince)
		p.LastSeqs = append(p.LastSeqs, r.d.LastSeq)
	}
	if len(p.DeviceIds) == 0 {
		return 0, nil
	}
	if err := q.SchedulerDevicesUpdate(ctx, p); err != nil {
		return 0, fmt.Errorf("write %d rollout devices: %w", len(p.DeviceIds), err)
	}
	return len(p.DeviceIds), nil
}

// join adds the reporting devices that a continuous rollout of their fleet
// selects and does not have yet, each as pending in its group by stable
// hash (rollout.GroupFor). Snapshot rollouts take no one after start.
func (s *Scheduler) join(ctx context.Context, q *db.Queries, strangers []input) (int, error) {
	fleets := map[uuid.UUID][]uuid.UUID{}
	var fleetIDs []uuid.UUID
	for _, in := range strangers {
		if _, ok := fleets[in.fleet]; !ok {
			fleetIDs = append(fleetIDs, in.fleet)
		}
		if ds := fleets[in.fleet]; len(ds) == 0 || ds[len(ds)-1] != in.device {
			fleets[in.fleet] = append(ds, in.device)
		}
	}
	rollouts, err := q.SchedulerContinuousRollouts(ctx, fleetIDs)
	if err != nil || len(rollouts) == 0 {
		return 0, wrap(err, "continuous rollouts")
	}
	joined := 0
	for _, r := range rollouts {
		ids, err := q.SchedulerJoinable(ctx, db.SchedulerJoinableParams{RolloutID: r.ID, DeviceIds: fleets[r.FleetID]})
		if err != nil {
			return 0, fmt.Errorf("joinable devices of rollout %s: %w", r.ID, err)
		}
		if len(ids) == 0 {
			continue
		}
		groups, err := q.RolloutGroups(ctx, r.ID)
		if err != nil {
			return 0, fmt.Errorf("groups of rollout %s: %w", r.ID, err)
		}
		shares := make([]float64, len(groups))
		for i, g := range groups {
			shares[i] = g.Share
		}
		current := int(r.CurrentGroup)
		// The groups before the current one have ended.
		ended := func(g int) bool { return g < current }
		add := db.RolloutDevicesAddParams{RolloutID: r.ID, DeviceIds: ids, Groups: make([]int32, len(ids))}
		for i, id := range ids {
			add.Groups[i] = int32(rollout.GroupFor(r.ID, id, shares, current, ended))
		}
		if err := q.RolloutDevicesAdd(ctx, add); err != nil {
			return 0, fmt.Errorf("add late joiners to rollout %s: %w", r.ID, err)
		}
		joined += len(ids)
	}
	return joined, nil
}

func deref(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

func wrap(err error, what string) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}
