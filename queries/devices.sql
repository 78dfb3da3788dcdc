-- name: DeviceGet :one
SELECT * FROM devices WHERE id = $1;

-- name: DeviceForUpdate :one
SELECT * FROM devices WHERE id = $1 FOR UPDATE;

-- name: DeviceRegister :one
-- A retry of the same registration conflicts on the id and returns nothing;
-- the caller then compares keys.
INSERT INTO devices (id, org_id, fleet_id, name, device_type, architecture, public_key, provisioned_with)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (id) DO NOTHING
RETURNING *;

-- name: DeviceUpdate :one
UPDATE devices SET name = $2, fleet_id = $3, pinned_release_id = $4, tags = $5 WHERE id = $1 RETURNING *;

-- name: DeviceDelete :execrows
DELETE FROM devices WHERE id = $1;

-- name: DeviceReport :execrows
-- A state reported over HTTP; applied only when its seq is above the stored
-- one (see DevicesApplyState for MQTT), so no path overwrites a newer state.
UPDATE devices SET last_seen_at = greatest(last_seen_at, now()), reported_at = now(),
  reported = @reported, reported_seq = @seq::bigint, running_release_id = @running_release_id,
  os_version = @os_version, agent_version = @agent_version
WHERE id = @id AND (reported_seq IS NULL OR reported_seq < @seq::bigint);

-- name: DeviceReportRefused :one
-- A report DeviceReport did not apply still shows the device alive; returns
-- the seq it lost to.
UPDATE devices SET last_seen_at = greatest(last_seen_at, now())
WHERE id = $1
RETURNING coalesce(reported_seq, -1)::bigint AS reported_seq;

-- name: DeviceList :many
-- Keyset pagination on (created_at, id); every filter is optional. Only the
-- columns a listed device shows or that decide its online and reported
-- state; tags as the jsonb's text (no column override makes them a map), which
-- the list writes into its response as it is (handlers/devices/list_encode.go)
-- rather than decoding it into a map to encode the map again.
SELECT id, org_id, fleet_id, name, device_type, architecture, pinned_release_id,
       tags::jsonb AS tags_json, created_at, updated_at, last_seen_at,
       connection_key, connected, reported, reported_at, reported_seq,
       public_url_enabled, public_url_port
FROM devices
WHERE devices.org_id = @org_id
  AND (sqlc.narg(fleet_id)::uuid IS NULL OR fleet_id = sqlc.narg(fleet_id))
  AND (sqlc.narg(tag_key)::text IS NULL OR (CASE WHEN sqlc.narg(tag_value)::text IS NULL
        THEN tags ? sqlc.narg(tag_key) ELSE tags @> jsonb_build_object(sqlc.narg(tag_key)::text, sqlc.narg(tag_value)::text) END))
  -- Online: connected over MQTT, or never connected over MQTT and reported
  -- over REST in the last 10 minutes (devices.OnlineWindow); connected
  -- implies a connection_key (devices_connected_check). Plain conditions on
  -- the columns, so that devices_org_connected_idx and devices_never_mqtt_idx
  -- serve them.
  AND (sqlc.narg(online)::boolean IS NULL
       OR (sqlc.narg(online) AND (connected OR (connection_key IS NULL AND last_seen_at > now() - interval '10 minutes')))
       OR (NOT sqlc.narg(online) AND NOT connected
           AND (connection_key IS NOT NULL OR last_seen_at IS NULL OR last_seen_at <= now() - interval '10 minutes')))
  AND (sqlc.narg(running_release_id)::uuid IS NULL OR running_release_id = sqlc.narg(running_release_id))
  AND (sqlc.narg(name_prefix)::text IS NULL OR name LIKE replace(replace(replace(sqlc.narg(name_prefix), '\', '\\'), '%', '\%'), '_', '\_') || '%')
  AND (sqlc.narg(device_group_id)::uuid IS NULL
       OR flock_in_device_group(sqlc.narg(device_group_id), devices.org_id, devices.id, devices.name, devices.tags))
  AND (sqlc.narg(after_time)::timestamptz IS NULL OR (created_at, id) > (sqlc.narg(after_time), sqlc.narg(after_id)::uuid))
ORDER BY created_at, id
LIMIT @max_rows;

-- name: DeviceScope :one
-- What authenticating a device token needs: that the device still exists, and where it is now.
SELECT org_id, fleet_id FROM devices WHERE id = $1;

-- name: DevicesApplyConnectivity :execrows
-- Like every batch update of devices here, it first locks its rows in id
-- order (the MATERIALIZED "locked" step): two ingester connections may
-- write batches naming the same devices in different orders, and rows
-- locked in the order each batch happened to list them deadlocked.
-- The ingester's batch of connectivity changes, one row per device at most
-- (parallel arrays, zipped by the parallel unnests). A row applies only when
-- its key is above the stored one (livestate.ConnSeq order), so a late or
-- redelivered event of an older connection changes nothing; last_seen_at
-- never moves back. Returns how many devices changed.
WITH c AS (SELECT unnest(@ids::uuid[]) AS id, unnest(@keys::bigint[]) AS key,
                  unnest(@connected::bool[]) AS connected, unnest(@ats::timestamptz[]) AS at),
locked AS MATERIALIZED (SELECT id FROM devices WHERE id IN (SELECT id FROM c) ORDER BY id FOR NO KEY UPDATE)
UPDATE devices d
SET connection_key = c.key, connected = c.connected, last_seen_at = greatest(d.last_seen_at, c.at)
FROM c
WHERE d.id = c.id AND d.id IN (SELECT id FROM locked) AND (d.connection_key IS NULL OR d.connection_key < c.key);

-- name: DevicesTouch :exec
-- Marks devices seen at the given times (one row per device at most) without
-- ever moving last_seen_at back; rows it would not change are not written.
WITH c AS (SELECT unnest(@ids::uuid[]) AS id, unnest(@ats::timestamptz[]) AS at),
locked AS MATERIALIZED (SELECT d.id FROM devices d JOIN c ON c.id = d.id
                        WHERE d.last_seen_at IS NULL OR d.last_seen_at < c.at ORDER BY d.id FOR NO KEY UPDATE OF d)
UPDATE devices d
SET last_seen_at = greatest(coalesce(d.last_seen_at, c.at), c.at)
FROM c
WHERE d.id = c.id AND d.id IN (SELECT id FROM locked) AND (d.last_seen_at IS NULL OR d.last_seen_at < c.at);

-- name: DevicesApplyState :exec
-- The ingester's batch of reported states, one row per device at most
-- (parallel arrays, zipped by the parallel unnests). A row applies only when
-- its seq is above the stored one, the rule DeviceReport applies to HTTP.
-- A running_release_ids entry of '' means the state named none.
WITH c AS (SELECT unnest(@ids::uuid[]) AS id, unnest(@seqs::bigint[]) AS seq, unnest(@reported::text[])::jsonb AS reported,
                  nullif(unnest(@running_release_ids::text[]), '')::uuid AS running_release_id, unnest(@os_versions::text[]) AS os_version,
                  unnest(@agent_versions::text[]) AS agent_version, unnest(@ats::timestamptz[]) AS at),
locked AS MATERIALIZED (SELECT id FROM devices WHERE id IN (SELECT id FROM c) ORDER BY id FOR NO KEY UPDATE)
UPDATE devices d
SET reported = c.reported, reported_seq = c.seq, reported_at = c.at,
    running_release_id = c.running_release_id, os_version = c.os_version, agent_version = c.agent_version
FROM c
WHERE d.id = c.id AND d.id IN (SELECT id FROM locked) AND (d.reported_seq IS NULL OR d.reported_seq < c.seq);
