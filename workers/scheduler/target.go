package scheduler

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/rollout"
)

// target newly targets pending devices of the current group of a running
// rollout: only while its maintenance window (the rollout's, else the
// fleet's) is open, and as many as the rate limit's bucket allows (at
// most rollout.MaxTargetBatch a step). Each targeted device gets the
// rollout's release as its assignment and a deadline of the group's
// timeout, and is nudged after commit.
func (s *Scheduler) target(ctx context.Context, q *db.Queries, st *step) error {
	if st.r.State != rollout.Running {
		return nil
	}
	open, err := s.windowOpen(ctx, q, st)
	if err != nil || !open {
		return err
	}
	cur := int(st.r.CurrentGroup)
	var spec rollout.GroupSpec
	if err := json.Unmarshal(st.groups[cur].Spec, &spec); err != nil {
		return fmt.Errorf("group %d spec: %w", cur, err)
	}
	succeeded := 0
	if st.spec.Ramp != nil {
		n, err := q.SchedulerSucceeded(ctx, st.r.ID)
		if err != nil {
			return fmt.Errorf("count succeeded devices: %w", err)
		}
		succeeded = int(n)
	}
	rate := rollout.Rate(st.spec, succeeded)
	take, bucket := rollout.Bucket{Tokens: st.r.Tokens, At: deref(st.r.TokensAt)}.Take(rate, rollout.MaxTargetBatch, st.now)
	targeted := 0
	if take > 0 {
		got, err := q.SchedulerTarget(ctx, db.SchedulerTargetParams{RolloutID: st.r.ID, GroupIdx: int32(cur),
			ReleaseID: st.r.ReleaseID, Now: st.now, Deadline: st.now.Add(spec.Timeout()), MaxRows: int32(take)})
		if err != nil {
			return fmt.Errorf("target group %d: %w", cur, err)
		}
		targeted = len(got)
		st.nudge = append(st.nudge, got...)
		st.more = targeted == rollout.MaxTargetBatch
		s.m.targeted.Add(float64(targeted))
	}
	if rate > 0 {
		// Tokens not spent (fewer devices were pending) stay in the bucket.
		bucket.Tokens += float64(take - targeted)
	}
	at := bucket.At
	if err := q.SchedulerSaveBucket(ctx, db.SchedulerSaveBucketParams{ID: st.r.ID, Tokens: bucket.Tokens, TokensAt: &at, RatePerMinute: rate}); err != nil {
		return fmt.Errorf("save the rate bucket: %w", err)
	}
	return nil
}

// windowOpen: the rollout's maintenance window, else its fleet's, is open
// at now (no window: always).
func (s *Scheduler) windowOpen(ctx context.Context, q *db.Queries, st *step) (bool, error) {
	w := st.spec.Window
	if w == nil {
		raw, err := q.SchedulerFleetWindow(ctx, st.r.FleetID)
		if err != nil {
			return false, fmt.Errorf("fleet maintenance window: %w", err)
		}
		if len(raw) > 0 && string(raw) != "null" {
			w = new(rollout.Window)
			if err := json.Unmarshal(raw, w); err != nil {
				return false, fmt.Errorf("fleet maintenance window: %w", err)
			}
		}
	}
	if w == nil {
		return true, nil
	}
	open, _ := w.Open(st.now)
	return open, nil
}
