-- name: StreamDeviceGroupMembers :many
-- The devices a device group stream passes, by the one definition of a
-- group's filter; the stream reads it again while it runs.
SELECT d.id FROM devices d
WHERE d.org_id = @org_id
  AND flock_in_device_group(@device_group_id, d.org_id, d.id, d.name, d.tags)
ORDER BY d.id;

-- name: StreamAccessHolds :one
-- Whether the caller of an open stream may still read the organisation: a
-- user who is still a member, an API key not deleted or expired. Open
-- streams ask again while they run, so removing someone ends their streams.
SELECT CASE WHEN @is_key::bool
  THEN EXISTS (SELECT 1 FROM api_keys k WHERE k.id = @actor_id AND k.org_id = @org_id AND (k.expires_at IS NULL OR k.expires_at > now()))
  ELSE EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = @actor_id AND m.org_id = @org_id)
END::bool AS holds;
