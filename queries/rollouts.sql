-- name: RolloutCreate :one
INSERT INTO rollouts (org_id, fleet_id, release_id, membership, selector, device_group_id, spec, created_by)
VALUES (@org_id, @fleet_id, @release_id, @membership, @selector, sqlc.narg(device_group_id), @spec, sqlc.narg(created_by))
RETURNING *;

-- name: RolloutGroupCreate :exec
INSERT INTO rollout_groups (rollout_id, idx, name, spec, share) VALUES ($1, $2, $3, $4, $5);

-- name: RolloutGet :one
SELECT * FROM rollouts WHERE id = $1;

-- name: RolloutForUpdate :one
SELECT * FROM rollouts WHERE id = $1 FOR UPDATE;

-- name: RolloutList :many
SELECT * FROM rollouts
WHERE fleet_id = @fleet_id
  AND (sqlc.narg(state)::text IS NULL OR state = sqlc.narg(state))
  AND (sqlc.narg(before_time)::timestamptz IS NULL OR (created_at, id) < (sqlc.narg(before_time), sqlc.narg(before_id)::uuid))
ORDER BY created_at DESC, id DESC
LIMIT @max_rows;

-- name: RolloutGroups :many
SELECT * FROM rollout_groups WHERE rollout_id = $1 ORDER BY idx;

-- name: RolloutGroupsOf :many
SELECT * FROM rollout_groups WHERE rollout_id = ANY(@rollout_ids::uuid[]) ORDER BY rollout_id, idx;

-- name: RolloutCounts :many
-- Devices by group and state, counted as they are now: a device deleted or
-- moved away is gone from them.
SELECT group_idx, state, count(*)::int AS n FROM rollout_devices
WHERE rollout_id = $1 GROUP BY group_idx, state;

-- name: RolloutCountsOf :many
SELECT rollout_id, group_idx, state, count(*)::int AS n FROM rollout_devices
WHERE rollout_id = ANY(@rollout_ids::uuid[]) GROUP BY rollout_id, group_idx, state;

-- name: RolloutSetState :one
UPDATE rollouts SET state = @state, state_reason = @state_reason,
  started_at = coalesce(started_at, CASE WHEN @state = 'running' THEN now() END),
  ended_at = CASE WHEN @state IN ('finished', 'aborted', 'rolled_back', 'canceled') THEN now() ELSE ended_at END
WHERE id = @id RETURNING *;

-- name: RolloutStart :one
-- The rollout takes hold of its fleet: what the fleet runs now and its
-- policy, to hold it there and restore at the end.
UPDATE rollouts SET state = 'running', state_reason = '', started_at = now(), from_release_id = sqlc.narg(from_release_id),
  fleet_policy_before = @fleet_policy_before, current_group = 0, tokens = 0, tokens_at = NULL,
  rate_per_minute = @rate_per_minute
WHERE id = @id RETURNING *;

-- name: RolloutAdvance :one
-- Moves to group next: the group left behind hands its pending devices
-- on, so none waits in a group that no longer targets.
WITH moved AS (
  UPDATE rollout_devices SET group_idx = @next
  WHERE rollout_id = @id AND group_idx = @current AND state = 'pending'
), left_behind AS (
  UPDATE rollout_groups SET state = 'complete', ended_at = coalesce(ended_at, now())
  WHERE rollout_id = @id AND idx = @current AND state IN ('pending', 'running')
), started AS (
  UPDATE rollout_groups SET state = 'running', started_at = now()
  WHERE rollout_id = @id AND idx = @next
)
UPDATE rollouts SET current_group = @next, group_ready_at = NULL WHERE id = @id RETURNING *;

-- name: RolloutGroupSetState :exec
UPDATE rollout_groups SET state = @state,
  started_at = CASE WHEN @state = 'running' THEN coalesce(started_at, now()) ELSE started_at END,
  ended_at = CASE WHEN @state IN ('succeeded', 'failed', 'complete') THEN coalesce(ended_at, now()) ELSE ended_at END
WHERE rollout_id = @rollout_id AND idx = @idx;

-- name: RolloutCandidates :many
-- The fleet's devices a rollout selects: not pinned (a pin beats a
-- rollout), carrying every tag asked for, and in the device group when one
-- is named.
SELECT d.id, d.tags FROM devices d
WHERE d.fleet_id = @fleet_id AND d.pinned_release_id IS NULL
  AND d.tags @> @tags::jsonb
  AND (sqlc.narg(device_group_id)::uuid IS NULL
       OR flock_in_device_group(sqlc.narg(device_group_id), d.org_id, d.id, d.name, d.tags))
ORDER BY d.id;

-- name: RolloutCandidateCount :one
SELECT count(*)::int FROM devices d
WHERE d.fleet_id = @fleet_id AND d.pinned_release_id IS NULL
  AND d.tags @> @tags::jsonb
  AND (sqlc.narg(device_group_id)::uuid IS NULL
       OR flock_in_device_group(sqlc.narg(device_group_id), d.org_id, d.id, d.name, d.tags));

-- name: RolloutDevicesAdd :exec
INSERT INTO rollout_devices (rollout_id, device_id, group_idx)
SELECT @rollout_id, unnest(@device_ids::uuid[]), unnest(@groups::int[])
ON CONFLICT DO NOTHING;

-- name: RolloutDeviceList :many
SELECT * FROM rollout_devices
WHERE rollout_id = @rollout_id
  AND (sqlc.narg(state)::text IS NULL OR state = sqlc.narg(state))
  AND (sqlc.narg(group_idx)::int IS NULL OR group_idx = sqlc.narg(group_idx))
  AND (sqlc.narg(after_id)::uuid IS NULL OR device_id > sqlc.narg(after_id))
ORDER BY device_id
LIMIT @max_rows;

-- name: RolloutRollBack :many
-- Puts every touched device of the rollout back on its previous
-- assignment; returns them, to nudge.
WITH touched AS (
  UPDATE rollout_devices SET state = 'rolled_back', reason = 'the rollout was aborted with rollback',
    state_at = now(), deadline = NULL, healthy_since = NULL
  WHERE rollout_id = @rollout_id AND state NOT IN ('pending', 'rolled_back')
  RETURNING device_id, previous_release_id
)
UPDATE devices d SET rollout_release_id = t.previous_release_id
FROM touched t WHERE d.id = t.device_id
RETURNING d.id;

-- name: FleetHold :exec
-- Holds a fleet on a release (a rollout starts), or moves it on (one
-- finishes): the fleet's pin and policy.
UPDATE fleets SET release_policy = @release_policy, pinned_release_id = sqlc.narg(pinned_release_id) WHERE id = @id;

-- name: FleetClearAssignments :many
-- When a rollout finishes the fleet runs its release, and when a person
-- re-pins a fleet they choose what it runs: rollout assignments (of this
-- rollout, or left by an aborted one) no longer apply. Returns the
-- devices, to nudge.
UPDATE devices SET rollout_release_id = NULL
WHERE fleet_id = @fleet_id AND rollout_release_id IS NOT NULL
RETURNING id;

-- name: FleetActiveRollout :one
-- The rollout that holds a fleet, if any (ready ones do not hold it yet).
SELECT id, state FROM rollouts
WHERE fleet_id = $1 AND state IN ('running', 'paused', 'waiting_for_approval')
LIMIT 1;

-- name: RolloutEventAdd :exec
-- Writes an event to the outbox, in the transaction of its transition.
INSERT INTO rollout_events (id, rollout_id, record) VALUES (@id, @rollout_id, @record);

-- name: RolloutGroupAcknowledge :exec
-- A resume after the group tripped its error threshold: the person has
-- seen the failures and goes on.
UPDATE rollout_groups SET threshold_acknowledged = true WHERE rollout_id = $1 AND idx = $2;

-- name: RolloutGroupSetShare :exec
UPDATE rollout_groups SET share = @share WHERE rollout_id = @rollout_id AND idx = @idx;

-- name: FleetOpenRollout :one
-- The rollout that keeps a fleet from getting another: one that has not
-- ended.
SELECT id, state FROM rollouts
WHERE fleet_id = $1 AND state IN ('ready', 'running', 'paused', 'waiting_for_approval')
LIMIT 1;

-- name: RolloutEventsForget :execrows
-- The janitor forgets outbox rows a week after they were published: Kafka
-- holds the history; the outbox only bridges a crash.
DELETE FROM rollout_events WHERE published_at < now() - interval '7 days';
