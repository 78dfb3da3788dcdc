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

// Start starts a ready rollout r (locked by the caller, the fleet too,
// the release checked): the fleet's devices it selects now are placed in
// their groups (rollout.Plan) as pending, the fleet is held on from, what
// it ran under fleetPolicy (so a release finalised meanwhile cannot move
// it past the rollout), and the first group runs; the scheduler targets
// from there.
func Start(ctx context.Context, q *db.Queries, r db.Rollout, fleetPolicy string, from uuid.NullUUID, actor string) (db.Rollout, error) {
	var sel struct {
		Tags map[string]string `json:"tags"`
	}
	if err := json.Unmarshal(r.Selector, &sel); err != nil {
		return r, fmt.Errorf("decode selector of rollout %s: %w", r.ID, err)
	}
	if sel.Tags == nil {
		sel.Tags = map[string]string{}
	}
	tags, err := json.Marshal(sel.Tags)
	if err != nil {
		return r, fmt.Errorf("encode tags: %w", err)
	}
	rows, err := q.RolloutCandidates(ctx, db.RolloutCandidatesParams{FleetID: r.FleetID, Tags: tags, DeviceGroupID: r.DeviceGroupID})
	if err != nil {
		return r, fmt.Errorf("select devices of rollout %s: %w", r.ID, err)
	}
	cands := make([]rollout.Candidate, len(rows))
	for i, d := range rows {
		cands[i] = rollout.Candidate{ID: d.ID, Tags: d.Tags}
	}
	groups, err := q.RolloutGroups(ctx, r.ID)
	if err != nil {
		return r, fmt.Errorf("load groups of rollout %s: %w", r.ID, err)
	}
	specs := make([]rollout.GroupSpec, len(groups))
	for i, g := range groups {
		if specs[i], err = GroupSpec(g); err != nil {
			return r, err
		}
	}
	placed, shares := rollout.Plan(r.ID, cands, specs)
	add := db.RolloutDevicesAddParams{RolloutID: r.ID, DeviceIds: make([]uuid.UUID, 0, len(placed)), Groups: make([]int32, 0, len(placed))}
	for _, c := range cands {
		if g, ok := placed[c.ID]; ok {
			add.DeviceIds = append(add.DeviceIds, c.ID)
			add.Groups = append(add.Groups, int32(g))
		}
	}
	if err := q.RolloutDevicesAdd(ctx, add); err != nil {
		return r, fmt.Errorf("place devices of rollout %s: %w", r.ID, err)
	}
	for i, s := range shares {
		if err := q.RolloutGroupSetShare(ctx, db.RolloutGroupSetShareParams{RolloutID: r.ID, Idx: int32(i), Share: s}); err != nil {
			return r, fmt.Errorf("set share of group %d of rollout %s: %w", i, r.ID, err)
		}
	}
	if from.Valid {
		if err := q.FleetHold(ctx, db.FleetHoldParams{ID: r.FleetID, ReleasePolicy: "pinned", PinnedReleaseID: from}); err != nil {
			return r, fmt.Errorf("hold fleet %s on release %s: %w", r.FleetID, from.UUID, err)
		}
	}
	spec, err := Spec(r)
	if err != nil {
		return r, err
	}
	r, err = q.RolloutStart(ctx, db.RolloutStartParams{ID: r.ID, FromReleaseID: from, FleetPolicyBefore: &fleetPolicy, RatePerMinute: spec.RatePerMinute})
	if err != nil {
		return r, fmt.Errorf("start rollout %s: %w", r.ID, err)
	}
	if err := q.RolloutGroupSetState(ctx, db.RolloutGroupSetStateParams{RolloutID: r.ID, Idx: 0, State: rollout.GroupRunning}); err != nil {
		return r, fmt.Errorf("start group 0 of rollout %s: %w", r.ID, err)
	}
	if err := Emit(ctx, q, r, rollout.EventStarted, nil, "", actor); err != nil {
		return r, err
	}
	first := 0
	return r, Emit(ctx, q, r, rollout.EventGroupStarted, &first, "", actor)
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

// Finish ends r (locked by the caller) successfully: the fleet moves to
// the release (MoveFleet) and the finish is recorded.
func Finish(ctx context.Context, q *db.Queries, nudge nudger.Notifier, r db.Rollout, actor string) (db.Rollout, error) {
	if err := MoveFleet(ctx, q, r); err != nil {
		return r, err
	}
	nudger.FleetAfterCommit(ctx, nudge, r.FleetID)
	r, err := q.RolloutSetState(ctx, db.RolloutSetStateParams{ID: r.ID, State: rollout.Finished, StateReason: ""})
	if err != nil {
		return r, fmt.Errorf("finish rollout %s: %w", r.ID, err)
	}
	return r, Emit(ctx, q, r, rollout.EventFinished, nil, "", actor)
}

// MoveFleet moves the fleet of a finishing rollout to its release: pinned
// to it, or tracking its latest again when it did before the rollout and
// the release is still its newest final one (a release finalised during
// the rollout was never rolled out, so tracking would send the fleet to it
// unwatched). Rollout assignments give way to the fleet's target; the
// caller nudges the fleet once this commits.
func MoveFleet(ctx context.Context, q *db.Queries, r db.Rollout) error {
	policy, pin := "pinned", uuid.NullUUID{UUID: r.ReleaseID, Valid: true}
	if r.FleetPolicyBefore != nil && *r.FleetPolicyBefore == "track_latest" {
		latest, err := q.ReleaseLatestFinal(ctx, r.FleetID)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("load latest release of fleet %s: %w", r.FleetID, err)
		}
		if err == nil && latest.ID == r.ReleaseID {
			policy, pin = "track_latest", uuid.NullUUID{}
		}
	}
	if err := q.FleetHold(ctx, db.FleetHoldParams{ID: r.FleetID, ReleasePolicy: policy, PinnedReleaseID: pin}); err != nil {
		return fmt.Errorf("move fleet %s to release %s: %w", r.FleetID, r.ReleaseID, err)
	}
	if _, err := q.FleetClearAssignments(ctx, r.FleetID); err != nil {
		return fmt.Errorf("clear rollout assignments of fleet %s: %w", r.FleetID, err)
	}
	return nil
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
