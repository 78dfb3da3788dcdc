package scheduler

import (
	"context"
	"fmt"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/rollout"
	"github.com/flock-io/flock-api/internal/rolloutstore"
)

// trip: the error threshold of the current group tripped. The group
// failed; the rollout pauses, or aborts (and, when its settings say so,
// puts every touched device back on its previous release).
func (s *Scheduler) trip(ctx context.Context, q *db.Queries, st *step, spec rollout.GroupSpec, c rollout.Counts) error {
	cur := int(st.r.CurrentGroup)
	t := spec.ErrorThreshold
	failed := 0
	types := t.FailureTypes
	if len(types) == 0 {
		types = []string{rollout.FailureFailed, rollout.FailureTimedOut, rollout.FailureUnreached}
	}
	for _, ft := range types {
		failed += c[ft]
	}
	reason := fmt.Sprintf("group %d (%s): %d of %d finished devices failed (%s), above the error threshold of %g%% (minimum sample %d)",
		cur, st.groups[cur].Name, failed, c.Done()-c[rollout.DeviceRolledBack], countsText(c, types), t.Percent, t.MinSample)
	if err := s.setGroupState(ctx, q, st, cur, rollout.GroupFailed); err != nil {
		return err
	}
	state, op := rollout.Paused, "pause"
	if t.Action == rollout.ThresholdAbort {
		state, op = rollout.Aborted, "abort"
		if st.spec.RollbackOnAbort {
			state = rollout.RolledBack
			ids, err := q.RolloutRollBack(ctx, st.r.ID)
			if err != nil {
				return fmt.Errorf("roll back: %w", err)
			}
			st.nudge = append(st.nudge, ids...)
		}
	}
	return s.setState(ctx, q, st, state, reason, rollout.EventThresholdTripped, op)
}

func countsText(c rollout.Counts, types []string) string {
	out := ""
	for i, ft := range types {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("%s %d", ft, c[ft])
	}
	return out
}

// stuck: every device of the group is done, too few succeeded and the
// error threshold did not trip: the rollout pauses for a person (resume
// goes on, next-group skips ahead, abort ends it).
func (s *Scheduler) stuck(ctx context.Context, q *db.Queries, st *step, spec rollout.GroupSpec, c rollout.Counts) error {
	cur := int(st.r.CurrentGroup)
	reason := fmt.Sprintf("group %d (%s) completed with %d of %d devices succeeded, below its success threshold of %g%%",
		cur, st.groups[cur].Name, c[rollout.DeviceSucceeded], c.Total(), spec.SuccessThreshold)
	if err := s.setGroupState(ctx, q, st, cur, rollout.GroupComplete); err != nil {
		return err
	}
	return s.setState(ctx, q, st, rollout.Paused, reason, rollout.EventPaused, "pause")
}

// advance starts the next group; the current one's pending devices go
// with it (RolloutAdvance).
func (s *Scheduler) advance(ctx context.Context, q *db.Queries, st *step) error {
	cur := st.r.CurrentGroup
	r, err := q.RolloutAdvance(ctx, db.RolloutAdvanceParams{ID: st.r.ID, Current: cur, Next: cur + 1})
	if err != nil {
		return fmt.Errorf("start group %d: %w", cur+1, err)
	}
	st.r = r
	// The bucket keeps what it holds: a new group does not reset the rate.
	return s.record(ctx, q, st, rollout.EventGroupStarted, int(cur+1), "", "next-group")
}

// finish: the last group is done. The fleet moves to the release
// (rolloutstore.MoveFleet, as a person's finish would) and is nudged.
func (s *Scheduler) finish(ctx context.Context, q *db.Queries, st *step) error {
	cur := int(st.r.CurrentGroup)
	if st.groups[cur].State == rollout.GroupRunning || st.groups[cur].State == rollout.GroupPending {
		if err := s.setGroupState(ctx, q, st, cur, rollout.GroupComplete); err != nil {
			return err
		}
	}
	if err := rolloutstore.MoveFleet(ctx, q, st.r); err != nil {
		return err
	}
	st.nudgeFleet = true
	if err := s.record(ctx, q, st, rollout.EventGroupCompleted, cur, "", ""); err != nil {
		return err
	}
	return s.setState(ctx, q, st, rollout.Finished, "", rollout.EventFinished, "finish")
}

func (s *Scheduler) setGroupState(ctx context.Context, q *db.Queries, st *step, idx int, state string) error {
	if err := q.RolloutGroupSetState(ctx, db.RolloutGroupSetStateParams{RolloutID: st.r.ID, Idx: int32(idx), State: state}); err != nil {
		return fmt.Errorf("group %d %s: %w", idx, state, err)
	}
	st.groups[idx].State = state
	return nil
}

// setState moves the rollout to state and records it (event and audit).
func (s *Scheduler) setState(ctx context.Context, q *db.Queries, st *step, state, reason, event, op string) error {
	r, err := q.RolloutSetState(ctx, db.RolloutSetStateParams{ID: st.r.ID, State: state, StateReason: reason})
	if err != nil {
		return fmt.Errorf("set state %s: %w", state, err)
	}
	st.r = r
	return s.record(ctx, q, st, event, int(r.CurrentGroup), reason, op)
}
