package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/rollout"
)

// Step steps every active rollout once at now, then publishes the outbox.
// It reports whether a rollout has more devices to target at once (a full
// batch was targeted). Replicas step concurrently: each rollout is stepped
// by whichever replica claims it first.
func (s *Scheduler) Step(ctx context.Context, now time.Time) (more bool, err error) {
	start := time.Now()
	defer func() { s.m.stepSeconds.Observe(time.Since(start).Seconds()) }()
	ids, err := db.New(s.pool).SchedulerActiveRollouts(ctx)
	if err != nil {
		return false, fmt.Errorf("list active rollouts: %w", err)
	}
	var errs []error
	for _, id := range ids {
		m, err := s.stepRollout(ctx, id, now)
		if err != nil {
			if ctx.Err() != nil {
				return false, ctx.Err()
			}
			errs = append(errs, fmt.Errorf("rollout %s: %w", id, err))
		}
		more = more || m
	}
	if _, err := s.PublishOutbox(ctx); err != nil {
		errs = append(errs, err)
	}
	return more, errors.Join(errs...)
}

// step is one rollout's step: its transaction and what follows its commit.
type step struct {
	r      db.Rollout
	spec   rollout.Spec
	groups []db.RolloutGroup
	now    time.Time

	nudge      []uuid.UUID // devices whose target changed
	nudgeFleet bool        // the fleet's target changed
	written    []written   // events and audit records written, for after commit
	more       bool
}

// stepRollout claims the rollout and steps it: what time does to its
// devices, the verdict on its current group and what follows, targeting.
// A rollout another replica (or an action) holds is skipped.
func (s *Scheduler) stepRollout(ctx context.Context, id uuid.UUID, now time.Time) (bool, error) {
	var st *step
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		r, err := q.SchedulerClaimRollout(ctx, id)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // held elsewhere, or no longer active
		}
		if err != nil {
			return fmt.Errorf("claim: %w", err)
		}
		st = &step{r: r, now: now}
		if err := json.Unmarshal(r.Spec, &st.spec); err != nil {
			return fmt.Errorf("spec: %w", err)
		}
		if st.groups, err = q.RolloutGroups(ctx, id); err != nil {
			return fmt.Errorf("groups: %w", err)
		}
		if int(r.CurrentGroup) >= len(st.groups) {
			return fmt.Errorf("current group %d of %d groups", r.CurrentGroup, len(st.groups))
		}
		if err := s.tickDevices(ctx, q, st); err != nil {
			return err
		}
		if err := s.judge(ctx, q, st); err != nil {
			return err
		}
		return s.target(ctx, q, st)
	})
	if err != nil || st == nil {
		return false, err
	}
	s.committed(st)
	return st.more, nil
}

// tickDevices moves the devices that time alone moves: past their
// deadline, or settled.
func (s *Scheduler) tickDevices(ctx context.Context, q *db.Queries, st *step) error {
	timing := rollout.Timing{Settle: st.spec.Settle()}
	due, err := q.SchedulerDueDevices(ctx, db.SchedulerDueDevicesParams{RolloutID: st.r.ID, Now: st.now,
		SettledBefore: st.now.Add(-timing.Settle), MaxRows: dueBatch})
	if err != nil {
		return fmt.Errorf("due devices: %w", err)
	}
	rows := make([]*row, 0, len(due))
	for _, d := range due {
		r := &row{rollout: st.r.ID, d: rollout.Device{ID: d.DeviceID, State: d.State, Reason: d.Reason,
			Deadline: deref(d.Deadline), HealthySince: deref(d.HealthySince), LastSeq: d.LastSeq}}
		r.d, r.changed = rollout.Tick(r.d, timing, st.now)
		rows = append(rows, r)
	}
	_, err = writeRows(ctx, q, rows, st.now)
	return err
}

// judge counts the current group, decides (rollout.Decide) and makes the
// decision's transitions.
func (s *Scheduler) judge(ctx context.Context, q *db.Queries, st *step) error {
	cur := int(st.r.CurrentGroup)
	g := st.groups[cur]
	var spec rollout.GroupSpec
	if err := json.Unmarshal(g.Spec, &spec); err != nil {
		return fmt.Errorf("group %d spec: %w", cur, err)
	}
	counts, err := groupCounts(ctx, q, st.r.ID, cur)
	if err != nil {
		return err
	}
	v := rollout.Judge(spec, counts)
	d := rollout.Decide(rollout.Progress{State: st.r.State, GroupState: g.State, ThresholdAcknowledged: g.ThresholdAcknowledged, Group: spec, Verdict: v,
		Last: cur == len(st.groups)-1, ReadyAt: deref(st.r.GroupReadyAt)}, st.now)
	switch {
	case d.Trip:
		return s.trip(ctx, q, st, spec, counts)
	case d.Stuck:
		return s.stuck(ctx, q, st, spec, counts)
	}
	if d.Succeeded {
		if err := s.setGroupState(ctx, q, st, cur, rollout.GroupSucceeded); err != nil {
			return err
		}
		reason := fmt.Sprintf("%d of %d devices succeeded (success threshold %g%%)", counts[rollout.DeviceSucceeded], counts.Total(), spec.SuccessThreshold)
		if err := s.record(ctx, q, st, rollout.EventGroupSucceeded, cur, reason, ""); err != nil {
			return err
		}
	}
	if !d.ReadyAt.IsZero() {
		if err := q.SchedulerSetGroupReadyAt(ctx, db.SchedulerSetGroupReadyAtParams{ID: st.r.ID, GroupReadyAt: &d.ReadyAt}); err != nil {
			return fmt.Errorf("group ready at: %w", err)
		}
	}
	switch d.Then {
	case rollout.ThenFinish:
		return s.finish(ctx, q, st)
	case rollout.ThenApproval:
		return s.setState(ctx, q, st, rollout.WaitingForApproval,
			fmt.Sprintf("group %d (%s) succeeded; group %d waits for approval", cur, g.Name, cur+1), rollout.EventWaitingForApproval, "await-approval")
	case rollout.ThenNextGroup:
		return s.advance(ctx, q, st)
	}
	return nil
}

func groupCounts(ctx context.Context, q *db.Queries, id uuid.UUID, group int) (rollout.Counts, error) {
	rows, err := q.SchedulerGroupCounts(ctx, db.SchedulerGroupCountsParams{RolloutID: id, GroupIdx: int32(group)})
	if err != nil {
		return nil, fmt.Errorf("count group %d: %w", group, err)
	}
	c := make(rollout.Counts, len(rows))
	for _, r := range rows {
		c[r.State] = int(r.N)
	}
	return c, nil
}
