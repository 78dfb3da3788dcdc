-- name: ApiKeyCreate :one
INSERT INTO api_keys (id, org_id, name, role, prefix, secret_hash, created_by, expires_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING *;

-- name: ApiKeyByID :one
SELECT k.*, o.name AS org_name FROM api_keys k JOIN orgs o ON o.id = k.org_id WHERE k.id = $1;

-- name: ApiKeyGet :one
SELECT * FROM api_keys WHERE org_id = $1 AND id = $2;

-- name: ApiKeyDelete :execrows
DELETE FROM api_keys WHERE org_id = $1 AND id = $2;

-- name: ApiKeyTouch :exec
-- Records use at most once a minute, so authentication is not a write per request.
UPDATE api_keys SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');

-- name: ApiKeyList :many
-- Newest first, keyset pagination on (created_at, id).
SELECT * FROM api_keys
WHERE org_id = @org_id
  AND (sqlc.narg(before_time)::timestamptz IS NULL OR (created_at, id) < (sqlc.narg(before_time), sqlc.narg(before_id)::uuid))
ORDER BY created_at DESC, id DESC
LIMIT @max_rows;
