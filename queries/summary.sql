-- name: SummaryDeviceCounts :many
-- The devices of these fleets by connectivity, running release and update
-- status, from the counters (migrations/00011_device_summary.sql): the
-- compacted counts plus the pending deltas. Combinations with no device are
-- left out. Run the reads of one summary in one REPEATABLE READ
-- transaction, so they see one moment.
SELECT fleet_id, connectivity, running_release_id, update_status, sum(devices)::bigint AS devices
FROM (
  SELECT s.fleet_id, s.connectivity, s.running_release_id, s.update_status, s.devices
  FROM device_summary s WHERE s.fleet_id = ANY(@fleet_ids::uuid[])
  UNION ALL
  SELECT d.fleet_id, d.connectivity, d.running_release_id, d.update_status, d.devices
  FROM device_summary_deltas d WHERE d.fleet_id = ANY(@fleet_ids::uuid[])
) c
GROUP BY fleet_id, connectivity, running_release_id, update_status
HAVING sum(devices) <> 0;

-- name: SummaryRolloutCounts :many
-- The rollouts of these fleets that have not ended, each group of each
-- (device_state '' and devices 0 for a group with no device), with the
-- group's devices by state.
SELECT r.fleet_id, r.id AS rollout_id, r.state AS rollout_state, g.idx AS group_idx,
  coalesce(c.state, '')::text AS device_state, coalesce(c.devices, 0)::bigint AS devices
FROM rollouts r
JOIN rollout_groups g ON g.rollout_id = r.id
LEFT JOIN LATERAL (
  SELECT x.state, sum(x.devices)::bigint AS devices FROM (
    SELECT s.state, s.devices FROM rollout_summary s WHERE s.rollout_id = r.id AND s.group_idx = g.idx
    UNION ALL
    SELECT d.state, d.devices FROM rollout_summary_deltas d WHERE d.rollout_id = r.id AND d.group_idx = g.idx
  ) x GROUP BY x.state HAVING sum(x.devices) <> 0
) c ON true
WHERE r.fleet_id = ANY(@fleet_ids::uuid[]) AND r.state IN ('ready', 'running', 'paused', 'waiting_for_approval')
ORDER BY r.fleet_id, r.created_at, r.id, g.idx, c.state;

-- name: SummaryOrgFleets :many
-- Every fleet of an organisation, by id.
SELECT id FROM fleets WHERE org_id = @org_id ORDER BY id;

-- name: SummaryCompactLock :one
-- One compaction at a time (every api replica runs the janitor): the others
-- skip their turn instead of queueing behind it. Held until the
-- transaction ends.
SELECT pg_try_advisory_xact_lock(7244390163240913601) AS locked;

-- name: SummaryCompactDevices :execrows
-- Folds every delta a snapshot sees into the counts and deletes it, in one
-- statement: a reader sees each delta either still pending or folded, never
-- both. Deltas written meanwhile stay for the next compaction.
WITH moved AS (
  DELETE FROM device_summary_deltas
  RETURNING fleet_id, connectivity, running_release_id, update_status, devices
)
INSERT INTO device_summary AS s (fleet_id, connectivity, running_release_id, update_status, devices)
SELECT fleet_id, connectivity, running_release_id, update_status, sum(devices)::bigint
FROM moved GROUP BY fleet_id, connectivity, running_release_id, update_status
ON CONFLICT ON CONSTRAINT device_summary_key DO UPDATE SET devices = s.devices + excluded.devices;

-- name: SummaryCompactRollouts :execrows
WITH moved AS (
  DELETE FROM rollout_summary_deltas RETURNING rollout_id, group_idx, state, devices
)
INSERT INTO rollout_summary AS s (rollout_id, group_idx, state, devices)
SELECT rollout_id, group_idx, state, sum(devices)::bigint
FROM moved GROUP BY rollout_id, group_idx, state
ON CONFLICT (rollout_id, group_idx, state) DO UPDATE SET devices = s.devices + excluded.devices;

-- name: SummaryForgetEmptyDevices :exec
DELETE FROM device_summary WHERE devices = 0;

-- name: SummaryForgetEmptyRollouts :exec
-- A deleted rollout's counts go this way too: deleting its devices wrote
-- the deltas that bring them to zero.
DELETE FROM rollout_summary WHERE devices = 0;
