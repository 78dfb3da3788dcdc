-- name: DeviceGroupCreate :one
INSERT INTO device_groups (org_id, name, tags, name_prefix, device_ids)
VALUES (@org_id, @name, @tags, sqlc.narg(name_prefix), sqlc.narg(device_ids)::uuid[])
RETURNING *;

-- name: DeviceGroupGet :one
SELECT * FROM device_groups WHERE id = $1;

-- name: DeviceGroupForUpdate :one
SELECT * FROM device_groups WHERE id = $1 FOR UPDATE;

-- name: DeviceGroupUpdate :one
UPDATE device_groups SET name = @name, tags = @tags, name_prefix = sqlc.narg(name_prefix), device_ids = sqlc.narg(device_ids)::uuid[]
WHERE id = @id RETURNING *;

-- name: DeviceGroupDelete :execrows
DELETE FROM device_groups WHERE id = $1;

-- name: DeviceGroupInUse :one
-- Whether a rollout that has not ended targets the group.
SELECT EXISTS (SELECT 1 FROM rollouts WHERE device_group_id = $1 AND state IN ('ready', 'running', 'paused', 'waiting_for_approval'));

-- name: DeviceGroupList :many
SELECT * FROM device_groups
WHERE org_id = @org_id
  AND (sqlc.narg(after_time)::timestamptz IS NULL OR (created_at, id) > (sqlc.narg(after_time), sqlc.narg(after_id)::uuid))
ORDER BY created_at, id
LIMIT @max_rows;
