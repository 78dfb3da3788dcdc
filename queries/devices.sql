-- name: DeviceGet :one
SELECT * FROM devices WHERE id = $1;

-- name: DeviceForUpdate :one
SELECT * FROM devices WHERE id = $1 FOR UPDATE;

-- name: DeviceRegister :one
-- A retry of the same registration conflicts on the id and returns nothing;
-- the caller then compares keys.
INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key, provisioned_with)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (id) DO NOTHING
RETURNING *;

-- name: DeviceUpdate :one
UPDATE devices SET name = $2, fleet_id = $3, pinned_release_id = $4, tags = $5 WHERE id = $1 RETURNING *;

-- name: DeviceDelete :execrows
DELETE FROM devices WHERE id = $1;

-- name: DeviceReport :exec
UPDATE devices SET last_seen_at = now(), reported = $2, running_release_id = $3, os_version = $4, agent_version = $5
WHERE id = $1;

-- name: DeviceList :many
-- Keyset pagination on (created_at, id); every filter is optional.
SELECT * FROM devices
WHERE org_id = @org_id
  AND (sqlc.narg(fleet_id)::uuid IS NULL OR fleet_id = sqlc.narg(fleet_id))
  AND (sqlc.narg(tag_key)::text IS NULL OR (CASE WHEN sqlc.narg(tag_value)::text IS NULL
        THEN tags ? sqlc.narg(tag_key) ELSE tags @> jsonb_build_object(sqlc.narg(tag_key)::text, sqlc.narg(tag_value)::text) END))
  AND (sqlc.narg(online)::boolean IS NULL OR (coalesce(last_seen_at > now() - interval '10 minutes', false) = sqlc.narg(online)))
  AND (sqlc.narg(running_release_id)::uuid IS NULL OR running_release_id = sqlc.narg(running_release_id))
  AND (sqlc.narg(name_prefix)::text IS NULL OR name LIKE replace(replace(replace(sqlc.narg(name_prefix), '\', '\\'), '%', '\%'), '_', '\_') || '%')
  AND (sqlc.narg(after_time)::timestamptz IS NULL OR (created_at, id) > (sqlc.narg(after_time), sqlc.narg(after_id)::uuid))
ORDER BY created_at, id
LIMIT @max_rows;

-- name: DeviceScope :one
-- What authenticating a device token needs: that the device still exists, and where it is now.
SELECT org_id, fleet_id FROM devices WHERE id = $1;
