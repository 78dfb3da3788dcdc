-- name: TargetChoices :many
-- Target state of batches of devices (internal/targetstate): what the device
-- state endpoint serves one device and what nudges announce to many.
-- For each existing device of a batch: its fleet, its architecture and the
-- release it should run, chosen by device pin, else its rollout
-- assignment, else fleet pin, else its fleet's newest final release (NULL
-- when the fleet has none). The newest final release is looked up once per
-- fleet, not once per device.
WITH d AS (
  SELECT d.id, d.fleet_id, d.architecture, coalesce(d.pinned_release_id, d.rollout_release_id, f.pinned_release_id) AS pinned_release_id
  FROM devices d JOIN fleets f ON f.id = d.fleet_id
  WHERE d.id = ANY(@ids::uuid[])
), latest AS (
  SELECT fl.fleet_id, (
    SELECT r.id FROM releases r
    WHERE r.fleet_id = fl.fleet_id AND r.status = 'final'
    ORDER BY r.finalized_at DESC, r.id DESC LIMIT 1
  ) AS release_id
  FROM (SELECT DISTINCT fleet_id FROM d WHERE pinned_release_id IS NULL) fl
)
SELECT d.id, d.fleet_id, d.architecture, r.id AS release_id
FROM d
LEFT JOIN latest ON latest.fleet_id = d.fleet_id AND d.pinned_release_id IS NULL
LEFT JOIN releases r ON r.id = coalesce(d.pinned_release_id, latest.release_id);

-- name: TargetReleases :many
SELECT id, version, services FROM releases WHERE id = ANY(@ids::uuid[]);

-- name: TargetVariables :many
-- The fleets' own variables and the devices' own, for a batch of devices.
SELECT * FROM config_variables
WHERE (device_id IS NULL AND fleet_id = ANY(@fleet_ids::uuid[])) OR device_id = ANY(@device_ids::uuid[]);

-- name: FleetDevicePage :many
-- A page of a fleet's device ids in the order of devices_fleet_idx; the
-- first page starts after the zero time.
SELECT id, created_at FROM devices
WHERE fleet_id = @fleet_id AND (created_at, id) > (@after_time::timestamptz, @after_id::uuid)
ORDER BY created_at, id
LIMIT @max_rows;
