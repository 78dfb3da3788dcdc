-- name: ReleaseCreate :one
INSERT INTO releases (org_id, fleet_id, version, status, services, tags, finalized_at)
VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $4 = 'final' THEN now() END)
RETURNING *;

-- name: ReleaseGet :one
SELECT * FROM releases WHERE id = $1;

-- name: ReleaseForUpdate :one
SELECT * FROM releases WHERE id = $1 FOR UPDATE;

-- name: ReleaseUpdate :one
UPDATE releases SET status = $2, tags = $3,
  finalized_at = CASE WHEN $2 = 'final' AND finalized_at IS NULL THEN now() ELSE finalized_at END
WHERE id = $1 RETURNING *;

-- name: ReleaseList :many
SELECT * FROM releases
WHERE fleet_id = @fleet_id
  AND (sqlc.narg(status)::text IS NULL OR status = sqlc.narg(status))
  AND (sqlc.narg(before_time)::timestamptz IS NULL OR (created_at, id) < (sqlc.narg(before_time), sqlc.narg(before_id)::uuid))
ORDER BY created_at DESC, id DESC
LIMIT @max_rows;

-- name: ReleaseLatestFinal :one
SELECT * FROM releases WHERE fleet_id = $1 AND status = 'final' ORDER BY finalized_at DESC, id DESC LIMIT 1;

-- name: ReleaseBuilt :one
-- Ends a build's draft release: final with its services' images, or
-- failed. A release that is no longer a draft is left alone.
UPDATE releases SET status = @status, services = @services,
  finalized_at = CASE WHEN @status::text = 'final' THEN now() END
WHERE id = @id AND status = 'draft'
RETURNING *;
