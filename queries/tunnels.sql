-- name: TunnelRegister :one
-- A device registers (or changes) its WireGuard key; its host number, once
-- given, stays. A key another device holds fails on the unique index.
INSERT INTO device_tunnels (device_id, public_key, host)
VALUES (@device_id, @public_key, nextval('device_tunnel_host_seq'))
ON CONFLICT (device_id) DO UPDATE SET public_key = EXCLUDED.public_key
RETURNING *;

-- name: TunnelByKey :one
-- The peer of a handshake: the device that registered this key, if it
-- still exists.
SELECT t.device_id, t.public_key, t.host, d.org_id
FROM device_tunnels t JOIN devices d ON d.id = t.device_id
WHERE t.public_key = @public_key;

-- name: TunnelByDevice :one
SELECT * FROM device_tunnels WHERE device_id = @device_id;

-- name: TunnelServerKeyInit :exec
INSERT INTO tunnel_server_key (private_key) VALUES (@private_key) ON CONFLICT DO NOTHING;

-- name: TunnelServerKey :one
SELECT private_key FROM tunnel_server_key;

-- name: OrgTunnelMinRole :one
SELECT tunnel_min_role FROM orgs WHERE id = @id;

-- name: TunnelSessionLock :exec
-- Serialises the session limits of one key (a device or an actor) across
-- replicas, until the transaction ends.
SELECT pg_advisory_xact_lock(hashtextextended(@lock_key::text, 16));

-- name: TunnelSessionsOpen :one
SELECT
  count(*) FILTER (WHERE device_id = @device_id)::bigint AS device_open,
  count(*) FILTER (WHERE actor_id = @actor_id)::bigint AS actor_open
FROM tunnel_sessions
WHERE ended_at IS NULL AND alive_until > now() AND (device_id = @device_id OR actor_id = @actor_id);

-- name: TunnelSessionStart :exec
INSERT INTO tunnel_sessions (id, org_id, device_id, actor_type, actor_id, actor_label, port, request_id, alive_until)
VALUES (@id, @org_id, @device_id, @actor_type, @actor_id, @actor_label, @port, @request_id, @alive_until);

-- name: TunnelSessionRenew :exec
UPDATE tunnel_sessions SET alive_until = @alive_until, bytes_to_device = @bytes_to_device, bytes_from_device = @bytes_from_device
WHERE id = @id AND ended_at IS NULL;

-- name: TunnelSessionEnd :exec
UPDATE tunnel_sessions SET ended_at = now(), alive_until = now(), bytes_to_device = @bytes_to_device,
  bytes_from_device = @bytes_from_device, outcome = @outcome
WHERE id = @id AND ended_at IS NULL;

-- name: TunnelSessionList :many
SELECT * FROM tunnel_sessions
WHERE device_id = @device_id
  AND (sqlc.narg(before_time)::timestamptz IS NULL OR (started_at, id) < (sqlc.narg(before_time), sqlc.narg(before_id)::uuid))
ORDER BY started_at DESC, id DESC
LIMIT @max_rows;

-- name: DevicePublicURL :one
-- The proxy's route: a device's public URL settings.
SELECT id, public_url_enabled, public_url_port FROM devices WHERE id = @id;

-- name: DeviceSetPublicURL :exec
UPDATE devices SET public_url_enabled = @enabled, public_url_port = @port WHERE id = @id;

-- name: OrgSetTunnelMinRole :exec
UPDATE orgs SET tunnel_min_role = @tunnel_min_role WHERE id = @id;
