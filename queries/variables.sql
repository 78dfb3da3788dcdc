-- name: VariableCreate :one
INSERT INTO config_variables (org_id, fleet_id, device_id, service, name, value, secret)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT ON CONSTRAINT config_variables_scope_key DO NOTHING
RETURNING *;

-- name: VariableGet :one
SELECT * FROM config_variables WHERE id = $1 AND fleet_id = @fleet_id AND device_id IS NOT DISTINCT FROM sqlc.narg(device_id)::uuid;

-- name: VariableUpdate :one
UPDATE config_variables SET value = $2 WHERE id = $1 RETURNING *;

-- name: VariableDelete :execrows
DELETE FROM config_variables WHERE id = $1;

-- name: VariableList :many
-- One scope: a fleet's own variables (device_id NULL) or one device's.
SELECT * FROM config_variables
WHERE fleet_id = @fleet_id AND device_id IS NOT DISTINCT FROM sqlc.narg(device_id)::uuid
  AND (sqlc.narg(after_service)::text IS NULL OR (service, name) > (sqlc.narg(after_service), sqlc.narg(after_name)::text))
ORDER BY service, name
LIMIT @max_rows;

-- name: VariablesForDevice :many
-- Every variable that applies to a device: its fleet's and its own.
SELECT * FROM config_variables
WHERE fleet_id = @fleet_id AND (device_id IS NULL OR device_id = @device_id::uuid);

-- name: VariableSizeForDevice :one
-- The merged set's size bound: names and values of the fleet's and the device's variables.
SELECT coalesce(sum(length(name) + length(value)), 0)::bigint FROM config_variables
WHERE fleet_id = @fleet_id AND (device_id IS NULL OR device_id = @device_id::uuid);

-- name: VariableMaxFleetDeviceSize :one
-- The largest merged set among a fleet's devices (or the fleet alone when it has none).
SELECT coalesce(max(s), 0)::bigint FROM (
  SELECT (SELECT coalesce(sum(length(name) + length(value)), 0) FROM config_variables v
          WHERE v.fleet_id = @fleet_id AND (v.device_id IS NULL OR v.device_id = d.id)) AS s
  FROM devices d WHERE d.fleet_id = @fleet_id
  UNION ALL
  SELECT coalesce(sum(length(name) + length(value)), 0) FROM config_variables WHERE fleet_id = @fleet_id AND device_id IS NULL
) sizes;

-- name: VariablesMoveDevice :exec
-- A device's own variables follow it to its new fleet.
UPDATE config_variables SET fleet_id = @fleet_id WHERE device_id = @device_id;
