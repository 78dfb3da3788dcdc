-- name: OrgCreate :one
INSERT INTO orgs (name, slug) VALUES ($1, sqlc.narg('slug')) RETURNING *;

-- name: OrgByID :one
SELECT * FROM orgs WHERE id = $1;

-- name: OrgUpdateName :one
UPDATE orgs SET name = $2 WHERE id = $1 RETURNING *;

-- name: OrgDelete :execrows
DELETE FROM orgs WHERE id = $1;

-- name: OrgListForUser :many
-- Keyset pagination on (created_at, id), oldest first.
SELECT o.*, m.role FROM orgs o JOIN memberships m ON m.org_id = o.id
WHERE m.user_id = @user_id
  AND (sqlc.narg(after_time)::timestamptz IS NULL OR (o.created_at, o.id) > (sqlc.narg(after_time), sqlc.narg(after_id)::uuid))
ORDER BY o.created_at, o.id
LIMIT @max_rows;
