-- name: StreamDeviceGroupMembers :many
-- The devices a device group stream passes, by the one definition of a
-- group's filter; the stream reads it again while it runs.
SELECT d.id FROM devices d
WHERE d.org_id = @org_id
  AND flock_in_device_group(@device_group_id, d.org_id, d.id, d.name, d.tags)
ORDER BY d.id;
