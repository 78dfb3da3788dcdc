// Package rolloutstore applies internal/rollout's rules to PostgreSQL: every
// change of a rollout's state, whether a person asks for it (handlers/
// rollouts) or the scheduler decides it (workers/scheduler), goes through
// here, inside the caller's transaction and under the rollout's row lock.
// Each change writes its flock.rollout.events.v1 record to the outbox in the
// same transaction, and tells the nudger about devices whose target changed
// once it commits.
package rolloutstore

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
	"github.com/flock-io/flock-api/workers/nudger"
)

// SchedulerActor is the actor of events the scheduler causes.
const SchedulerActor = "scheduler"

// Emit writes one event of r to the outbox.
func Emit(ctx context.Context, q *db.Queries, r db.Rollout, event string, group *int, reason, actor string) error {
	ev := rollout.Event{ID: uuid.Must(uuid.NewV7()), RolloutID: r.ID, OrgID: r.OrgID, FleetID: r.FleetID,
		Event: event, State: r.State, Group: group, Reason: reason, Actor: actor, At: time.Now()}
	rec := ev.Record()
	if err := q.RolloutEventAdd(ctx, db.RolloutEventAddParams{ID: ev.ID, RolloutID: r.ID, Record: rec.Value}); err != nil {
		return fmt.Errorf("record event %s of rollout %s: %w", event, r.ID, err)
	}
	return nil
}

// ErrLastGroup is a move to the next group from the last one.
var ErrLastGroup = errors.New("the rollout is in its last group")

// Act takes a step of rollout.Act for r (locked by the caller): it rolls
// touched devices back, moves to the next group, sets the state and
// records the event. reason explains a state the scheduler chose; actor
// names who acted.
func Act(ctx context.Context, q *db.Queries, nudge nudger.Notifier, r db.Rollout, action string, step rollout.Step, reason, actor string) (db.Rollout, error) {
	var err error
	if step.NextGroup {
		if r, err = Advance(ctx, q, r, actor); err != nil {
			return r, err
		}
	}
	if step.Rollback {
		ids, err := q.RolloutRollBack(ctx, r.ID)
		if err != nil {
			return r, fmt.Errorf("roll back devices of rollout %s: %w", r.ID, err)
		}
		nudger.DevicesAfterCommit(ctx, nudge, ids...)
	}
	if r.State != step.State || r.StateReason != reason {
		r, err = q.RolloutSetState(ctx, db.RolloutSetStateParams{ID: r.ID, State: step.State, StateReason: reason})
		if err != nil {
			return r, fmt.Errorf("set rollout %s %s: %w", r.ID, step.State, err)
		}
	}
	if action == rollout.ActionNextGroup || action == rollout.ActionApprove {
		return r, nil // Advance recorded group_started
	}
	return r, Emit(ctx, q, r, rollout.ActionEvent(action, step), nil, reason, actor)
}

// Advance moves r to its next group: the group left behind is complete and
// hands its pending devices on, the next one runs.
func Advance(ctx context.Context, q *db.Queries, r db.Rollout, actor string) (db.Rollout, error) {
	groups, err := q.RolloutGroups(ctx, r.ID)
	if err != nil {
		return r, fmt.Errorf("load groups of rollout %s: %w", r.ID, err)
	}
	next := r.CurrentGroup + 1
	if int(next) >= len(groups) {
		return r, ErrLastGroup
	}
	r, err = q.RolloutAdvance(ctx, db.RolloutAdvanceParams{ID: r.ID, Current: r.CurrentGroup, Next: next})
	if err != nil {
		return r, fmt.Errorf("advance rollout %s to group %d: %w", r.ID, next, err)
	}
	g := int(next)
	return r, Emit(ctx, q, r, rollout.EventGroupStarted, &g, "", actor)
}

// Finish ends r (locked by the caller) successfully: the fleet moves to the
// release, tracking the latest again if it did before and the release is
// still its newest, and rollout assignments give way to the fleet's target.
func Finish(ctx context.Context, q *db.Queries, nudge nudger.Notifier, r db.Rollout, actor string) (db.Rollout, error) {
	policy, pin := "pinned", uuid.NullUUID{UUID: r.ReleaseID, Valid: true}
	if r.FleetPolicyBefore != nil && *r.FleetPolicyBefore == "track_latest" {
		latest, err := q.ReleaseLatestFinal(ctx, r.FleetID)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return r, fmt.Errorf("load latest release of fleet %s: %w", r.FleetID, err)
		}
		if err == nil && latest.ID == r.ReleaseID {
			policy, pin = "track_latest", uuid.NullUUID{}
		}
	}
	if err := q.FleetHold(ctx, db.FleetHoldParams{ID: r.FleetID, ReleasePolicy: policy, PinnedReleaseID: pin}); err != nil {
		return r, fmt.Errorf("move fleet %s to release %s: %w", r.FleetID, r.ReleaseID, err)
	}
	if _, err := q.FleetClearAssignments(ctx, r.FleetID); err != nil {
		return r, fmt.Errorf("clear rollout assignments of fleet %s: %w", r.FleetID, err)
	}
	nudger.FleetAfterCommit(ctx, nudge, r.FleetID)
	r, err := q.RolloutSetState(ctx, db.RolloutSetStateParams{ID: r.ID, State: rollout.Finished, StateReason: ""})
	if err != nil {
		return r, fmt.Errorf("finish rollout %s: %w", r.ID, err)
	}
	return r, Emit(ctx, q, r, rollout.EventFinished, nil, "", actor)
}

// Spec decodes a rollout's settings.
func Spec(r db.Rollout) (rollout.Spec, error) {
	var s rollout.Spec
	if err := json.Unmarshal(r.Spec, &s); err != nil {
		return s, fmt.Errorf("decode settings of rollout %s: %w", r.ID, err)
	}
	return s, nil
}

// GroupSpec decodes a group's settings.
func GroupSpec(g db.RolloutGroup) (rollout.GroupSpec, error) {
	var s rollout.GroupSpec
	if err := json.Unmarshal(g.Spec, &s); err != nil {
		return s, fmt.Errorf("decode settings of group %d of rollout %s: %w", g.Idx, g.RolloutID, err)
	}
	return s, nil
}
