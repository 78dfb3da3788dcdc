-- name: FleetCreate :one
INSERT INTO fleets (org_id, name, architecture, tags, slug) VALUES ($1, $2, $3, $4, sqlc.narg('slug')) RETURNING *;

-- name: FleetGet :one
SELECT * FROM fleets WHERE id = $1;

-- name: FleetForUpdate :one
SELECT * FROM fleets WHERE id = $1 FOR UPDATE;

-- name: FleetUpdate :one
UPDATE fleets SET name = $2, release_policy = $3, pinned_release_id = $4, tags = $5, maintenance_window = $6 WHERE id = $1 RETURNING *;

-- name: FleetDelete :execrows
DELETE FROM fleets WHERE id = $1;

-- name: FleetList :many
SELECT * FROM fleets
WHERE org_id = @org_id
  AND (sqlc.narg(after_time)::timestamptz IS NULL OR (created_at, id) > (sqlc.narg(after_time), sqlc.narg(after_id)::uuid))
ORDER BY created_at, id
LIMIT @max_rows;

-- name: FleetCountByOrg :one
SELECT count(*) FROM fleets WHERE org_id = $1;

-- name: DeviceCountByFleet :one
SELECT count(*) FROM devices WHERE fleet_id = $1;
