-- name: RegistryRepoAccess :one
-- The organisation and fleet a repository <org slug>/<fleet slug>/... of
-- the platform registry belongs to, and the role of a user there (NULL when
-- not a member, or for uuid.Nil).
SELECT o.id AS org_id, f.id AS fleet_id, m.role AS member_role
FROM orgs o
JOIN fleets f ON f.org_id = o.id AND f.slug = @fleet_slug
LEFT JOIN memberships m ON m.org_id = o.id AND m.user_id = @user_id
WHERE o.slug = @org_slug;

-- name: RegistryDevice :one
-- What decides which images a device may use (internal/deviceimages: the
-- registry-proxy's pulls, the delta endpoint): its organisation and slug,
-- its fleet and architecture, and the releases it runs and ran before.
SELECT d.org_id, d.fleet_id, d.architecture, o.slug AS org_slug, d.running_release_id, d.previous_release_id
FROM devices d JOIN orgs o ON o.id = d.org_id
WHERE d.id = $1;

-- name: RegistryFleetReleases :many
-- Releases of a fleet among ids (a device's running and previous ones;
-- those of another fleet give the device nothing).
SELECT id, services FROM releases WHERE fleet_id = @fleet_id AND id = ANY(@ids::uuid[]);
