-- name: CommandDevice :one
-- What a new command needs to know of its device.
SELECT id, org_id, fleet_id, agent_version FROM devices WHERE id = $1;

-- name: CommandCreate :one
INSERT INTO commands (org_id, fleet_id, device_id, type, service, expires_at, created_by_type, created_by_id, created_by_label)
VALUES (@org_id, @fleet_id, @device_id, @type, sqlc.narg(service), now() + make_interval(secs => @expires_in::integer),
  @created_by_type, @created_by_id, @created_by_label)
RETURNING *;

-- name: CommandGet :one
SELECT * FROM commands WHERE id = $1;

-- name: CommandList :many
SELECT * FROM commands
WHERE device_id = @device_id
  AND (sqlc.narg(status)::text IS NULL OR status = sqlc.narg(status))
  AND (sqlc.narg(before_time)::timestamptz IS NULL OR (created_at, id) < (sqlc.narg(before_time), sqlc.narg(before_id)::uuid))
ORDER BY created_at DESC, id DESC
LIMIT @max_rows;

-- name: CommandsAnnounced :exec
-- Locks in id order, as ApplyResults does, so the two never deadlock.
UPDATE commands SET announced_at = now()
WHERE id IN (SELECT id FROM commands WHERE id = ANY(@ids::uuid[]) AND announced_at IS NULL ORDER BY id FOR UPDATE);

-- name: CommandsUnannounced :many
-- Commands whose creation was not sent on after commit (the process
-- stopped between the two), older than a grace that lets the normal path
-- finish first.
SELECT * FROM commands
WHERE announced_at IS NULL AND created_at < now() - make_interval(secs => @grace_seconds::float8)
ORDER BY created_at
LIMIT @max_rows
FOR UPDATE SKIP LOCKED;

-- name: CommandsOpenForDevices :many
-- The commands to send again to devices that just connected: not finished,
-- not expired, and announced (their pending event is out, so no answer of
-- the device can overtake it on the events topic).
SELECT * FROM commands
WHERE device_id = ANY(@device_ids::uuid[]) AND status IN ('pending', 'delivered') AND expires_at > now()
  AND announced_at IS NOT NULL
ORDER BY created_at, id;

-- name: CommandApplyResult :one
-- A device's acknowledgement, applied only when it moves the command
-- forward: received takes a pending command to delivered; succeeded or
-- failed take a pending or delivered one to its final status. A
-- redelivered or late acknowledgement matches no row. A device can only
-- answer for its own commands.
UPDATE commands SET
  status = @status::text,
  delivered_at = coalesce(delivered_at, @at::timestamptz),
  completed_at = CASE WHEN @status::text IN ('succeeded', 'failed') THEN @at::timestamptz END,
  error = CASE WHEN @status::text = 'failed' THEN sqlc.narg(error)::text END
WHERE id = @id AND device_id = @device_id
  AND (status = 'pending' OR (status = 'delivered' AND @status::text IN ('succeeded', 'failed')))
RETURNING *;

-- name: CommandsExpire :many
-- Open commands past their expiry become expired, a bounded batch at a
-- time; SKIP LOCKED lets several workers share the work, and a command an
-- acknowledgement is updating now is looked at on the next pass. One not
-- announced yet waits for its pending event to go out first.
UPDATE commands SET status = 'expired', completed_at = now()
WHERE id IN (
  SELECT c.id FROM commands c
  WHERE c.status IN ('pending', 'delivered') AND c.expires_at <= now() AND c.announced_at IS NOT NULL
  ORDER BY c.expires_at
  LIMIT @max_rows
  FOR UPDATE SKIP LOCKED)
RETURNING *;

-- name: CommandAccess :one
SELECT c.org_id, m.role FROM commands c
LEFT JOIN memberships m ON m.org_id = c.org_id AND m.user_id = @user_id
WHERE c.id = @id;
