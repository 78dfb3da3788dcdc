-- name: SchedulerDevicesForUpdate :many
-- The rows of a batch's devices in rollouts that are active, locked in
-- key order (every locker of several rows goes in this order, so two
-- batches cannot deadlock), with what applying a report needs of their
-- rollout.
SELECT rd.rollout_id, rd.device_id, rd.state, rd.reason, rd.deadline, rd.healthy_since, rd.last_seq,
  r.release_id, coalesce(rd.previous_release_id, r.from_release_id) AS previous_release_id, r.spec
FROM rollout_devices rd JOIN rollouts r ON r.id = rd.rollout_id
WHERE rd.device_id = ANY(@device_ids::uuid[])
  AND r.state IN ('running', 'paused', 'waiting_for_approval')
ORDER BY rd.rollout_id, rd.device_id
FOR UPDATE OF rd;

-- name: SchedulerDevicesUpdate :exec
-- Writes back the rows a batch (or a tick) changed, in one statement. A
-- zero time (0001-01-01) stands for no deadline or no healthy_since: the
-- arrays cannot carry NULLs.
UPDATE rollout_devices rd SET
  state = u.state, reason = u.reason, last_seq = u.last_seq,
  deadline = nullif(u.deadline, '0001-01-01 00:00:00+00'::timestamptz),
  healthy_since = nullif(u.healthy_since, '0001-01-01 00:00:00+00'::timestamptz),
  state_at = CASE WHEN rd.state <> u.state THEN @now::timestamptz ELSE rd.state_at END
FROM (
  SELECT unnest(@rollout_ids::uuid[]) AS rollout_id, unnest(@device_ids::uuid[]) AS device_id,
    unnest(@states::text[]) AS state, unnest(@reasons::text[]) AS reason,
    unnest(@deadlines::timestamptz[]) AS deadline, unnest(@healthy_since::timestamptz[]) AS healthy_since,
    unnest(@last_seqs::bigint[]) AS last_seq
) u
WHERE rd.rollout_id = u.rollout_id AND rd.device_id = u.device_id;

-- name: SchedulerContinuousRollouts :many
-- Active continuous rollouts of these fleets: devices that report and
-- are not in them yet may join.
SELECT id, fleet_id, current_group FROM rollouts
WHERE fleet_id = ANY(@fleet_ids::uuid[]) AND membership = 'continuous'
  AND state IN ('running', 'paused', 'waiting_for_approval');

-- name: SchedulerJoinable :many
-- Of these devices, those a rollout's selector takes that are not in it
-- yet: the rollout's fleet, not pinned, every selector tag, and in the
-- device group when one is named (the same rules as RolloutCandidates).
SELECT d.id FROM devices d JOIN rollouts r ON r.id = @rollout_id
WHERE d.id = ANY(@device_ids::uuid[]) AND d.fleet_id = r.fleet_id AND d.pinned_release_id IS NULL
  AND d.tags @> coalesce(r.selector -> 'tags', '{}'::jsonb)
  AND (r.device_group_id IS NULL OR flock_in_device_group(r.device_group_id, d.org_id, d.id, d.name, d.tags))
  AND NOT EXISTS (SELECT 1 FROM rollout_devices rd WHERE rd.rollout_id = r.id AND rd.device_id = d.id)
ORDER BY d.id;

-- name: SchedulerActiveRollouts :many
SELECT id FROM rollouts WHERE state IN ('running', 'paused', 'waiting_for_approval') ORDER BY id;

-- name: SchedulerClaimRollout :one
-- One replica steps a rollout at a time; the others skip it rather than
-- wait, and an action of the API (which waits for the lock) goes before
-- or after a step, never into the middle of one.
SELECT * FROM rollouts WHERE id = @id AND state IN ('running', 'paused', 'waiting_for_approval')
FOR UPDATE SKIP LOCKED;

-- name: SchedulerDueDevices :many
-- Devices time alone may move: past their deadline, or running the release
-- healthy since before settled_before. Rows a batch holds are skipped: the
-- next step sees them.
SELECT device_id, state, reason, deadline, healthy_since, last_seq FROM rollout_devices
WHERE rollout_id = @rollout_id
  AND (deadline <= @now::timestamptz OR (state = 'running' AND healthy_since <= @settled_before::timestamptz))
ORDER BY device_id
LIMIT @max_rows
FOR UPDATE SKIP LOCKED;

-- name: SchedulerGroupCounts :many
-- One group's devices by state.
SELECT state, count(*)::int AS n FROM rollout_devices
WHERE rollout_id = @rollout_id AND group_idx = @group_idx GROUP BY state;

-- name: SchedulerSucceeded :one
-- Devices of the rollout that succeeded so far, for the rate's ramp.
SELECT count(*)::int FROM rollout_devices WHERE rollout_id = @rollout_id AND state = 'succeeded';

-- name: SchedulerTarget :many
-- Targets up to max_rows pending devices of a group: each remembers its
-- assignment before (a rollback restores it) and gets its deadline, and
-- its assignment becomes the rollout's release. Returns them, to nudge.
-- Rows a batch holds are skipped for this step.
WITH picked AS (
  SELECT rd.device_id FROM rollout_devices rd
  WHERE rd.rollout_id = @rollout_id AND rd.group_idx = @group_idx AND rd.state = 'pending'
  ORDER BY rd.device_id
  LIMIT @max_rows
  FOR UPDATE SKIP LOCKED
), targeted AS (
  UPDATE rollout_devices rd SET state = 'targeted', reason = '', targeted_at = @now::timestamptz,
    state_at = @now::timestamptz, deadline = @deadline::timestamptz, previous_release_id = d.rollout_release_id
  FROM picked p, devices d
  WHERE rd.rollout_id = @rollout_id AND rd.device_id = p.device_id AND d.id = p.device_id
  RETURNING rd.device_id
)
UPDATE devices d SET rollout_release_id = @release_id::uuid
FROM targeted t WHERE d.id = t.device_id
RETURNING d.id;

-- name: SchedulerSaveBucket :exec
UPDATE rollouts SET tokens = @tokens, tokens_at = @tokens_at, rate_per_minute = @rate_per_minute WHERE id = @id;

-- name: SchedulerSetGroupReadyAt :exec
UPDATE rollouts SET group_ready_at = @group_ready_at WHERE id = @id;

-- name: SchedulerFleetWindow :one
SELECT maintenance_window FROM fleets WHERE id = @id;

-- name: SchedulerOutboxLock :one
-- One replica publishes the outbox at a time, so a rollout's events reach
-- the topic in the order they were written.
SELECT pg_try_advisory_xact_lock(7305243911460337) AS locked;

-- name: SchedulerOutboxTake :many
SELECT seq, id, rollout_id, record FROM rollout_events WHERE published_at IS NULL ORDER BY seq LIMIT @max_rows;

-- name: SchedulerOutboxPublished :exec
UPDATE rollout_events SET published_at = now() WHERE seq = ANY(@seqs::bigint[]);
