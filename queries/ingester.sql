-- name: DeviceOwners :many
-- The org and fleet of each of a batch of devices the ingester heard from;
-- a deleted device is simply absent.
SELECT id, org_id, fleet_id FROM devices WHERE id = ANY(@ids::uuid[]);
