-- name: ProvisioningKeyCreate :one
INSERT INTO provisioning_keys (id, org_id, fleet_id, name, prefix, secret_hash, created_by, expires_at, max_uses)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING *;

-- name: ProvisioningKeyList :many
SELECT * FROM provisioning_keys
WHERE fleet_id = @fleet_id
  AND (sqlc.narg(before_time)::timestamptz IS NULL OR (created_at, id) < (sqlc.narg(before_time), sqlc.narg(before_id)::uuid))
ORDER BY created_at DESC, id DESC
LIMIT @max_rows;

-- name: ProvisioningKeyRevoke :execrows
UPDATE provisioning_keys SET revoked_at = now() WHERE fleet_id = $1 AND id = $2 AND revoked_at IS NULL;

-- name: ProvisioningKeyGet :one
SELECT * FROM provisioning_keys WHERE fleet_id = $1 AND id = $2;

-- name: ProvisioningKeyForUse :one
-- Locks the key so concurrent registrations count its uses exactly.
SELECT * FROM provisioning_keys WHERE id = $1 FOR UPDATE;

-- name: ProvisioningKeyUse :exec
UPDATE provisioning_keys SET uses = uses + 1 WHERE id = $1;
