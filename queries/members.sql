-- name: MembershipRole :one
SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2;

-- name: MembershipCreate :one
INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, $3)
ON CONFLICT (org_id, user_id) DO NOTHING
RETURNING *;

-- name: MembershipUpdateRole :one
UPDATE memberships SET role = $3 WHERE org_id = $1 AND user_id = $2 RETURNING *;

-- name: MembershipDelete :execrows
DELETE FROM memberships WHERE org_id = $1 AND user_id = $2;

-- name: OwnerCountForUpdate :one
-- Locks the organisation's owner rows so two concurrent demotions cannot both
-- see another owner and leave none.
SELECT count(*) FROM (SELECT 1 FROM memberships WHERE org_id = $1 AND role = 'owner' FOR UPDATE) owners;

-- name: MemberGet :one
SELECT m.role, m.created_at AS joined_at, u.* FROM memberships m JOIN users u ON u.id = m.user_id
WHERE m.org_id = $1 AND m.user_id = $2;

-- name: MemberList :many
SELECT m.role, m.created_at AS joined_at, u.* FROM memberships m JOIN users u ON u.id = m.user_id
WHERE m.org_id = @org_id
  AND (sqlc.narg(after_time)::timestamptz IS NULL OR (m.created_at, m.user_id) > (sqlc.narg(after_time), sqlc.narg(after_id)::uuid))
ORDER BY m.created_at, m.user_id
LIMIT @max_rows;

-- name: MembershipsOfUser :many
SELECT m.org_id, o.name AS org_name, m.role FROM memberships m JOIN orgs o ON o.id = m.org_id
WHERE m.user_id = $1 ORDER BY o.created_at, o.id;

-- name: FleetAccess :one
-- The fleet's organisation and the user's role there, in one round trip.
SELECT f.org_id, m.role FROM fleets f
LEFT JOIN memberships m ON m.org_id = f.org_id AND m.user_id = @user_id
WHERE f.id = @id;

-- name: DeviceAccess :one
SELECT d.org_id, m.role FROM devices d
LEFT JOIN memberships m ON m.org_id = d.org_id AND m.user_id = @user_id
WHERE d.id = @id;

-- name: ReleaseAccess :one
SELECT r.org_id, m.role FROM releases r
LEFT JOIN memberships m ON m.org_id = r.org_id AND m.user_id = @user_id
WHERE r.id = @id;

-- name: RolloutAccess :one
SELECT r.org_id, m.role FROM rollouts r
LEFT JOIN memberships m ON m.org_id = r.org_id AND m.user_id = @user_id
WHERE r.id = @id;

-- name: DeviceGroupAccess :one
SELECT g.org_id, m.role FROM device_groups g
LEFT JOIN memberships m ON m.org_id = g.org_id AND m.user_id = @user_id
WHERE g.id = @id;

-- name: BuildAccess :one
SELECT b.org_id, m.role FROM builds b
LEFT JOIN memberships m ON m.org_id = b.org_id AND m.user_id = @user_id
WHERE b.id = @id;
