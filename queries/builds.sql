-- name: BuildCreate :one
INSERT INTO builds (id, org_id, fleet_id, release_id, version, architectures, services, source_key, source_bytes, created_by)
VALUES (@id, @org_id, @fleet_id, @release_id, @version, @architectures, @services, @source_key, @source_bytes, @created_by)
RETURNING *;

-- name: BuildImageCreate :exec
INSERT INTO build_images (build_id, service, architecture, needs_run, image)
VALUES (@build_id, @service, @architecture, @needs_run, @image);

-- name: BuildGet :one
SELECT * FROM builds WHERE id = $1;

-- name: BuildForUpdate :one
SELECT * FROM builds WHERE id = $1 FOR UPDATE;

-- name: BuildByRelease :one
SELECT * FROM builds WHERE release_id = $1;

-- name: BuildList :many
SELECT * FROM builds
WHERE fleet_id = @fleet_id
  AND (sqlc.narg(status)::text IS NULL OR status = sqlc.narg(status))
  AND (sqlc.narg(before_time)::timestamptz IS NULL OR (created_at, id) < (sqlc.narg(before_time), sqlc.narg(before_id)::uuid))
ORDER BY created_at DESC, id DESC
LIMIT @max_rows;

-- name: BuildImages :many
SELECT * FROM build_images WHERE build_id = $1 ORDER BY service, architecture;

-- name: BuildImagesOf :many
-- The images of several builds (a page of them).
SELECT * FROM build_images WHERE build_id = ANY(@ids::uuid[]) ORDER BY build_id, service, architecture;

-- name: BuildImageClaim :one
-- Takes one image of the build that this builder can build: queued, or
-- running under a lease that ran out; an architecture it runs on or
-- emulates, or one without RUN steps for it. Another builder's claim of
-- the same row waits for this one, then skips it.
UPDATE build_images bi
SET status = 'running', holder = @holder, lease_until = now() + make_interval(secs => @lease_seconds::float8),
    attempts = bi.attempts + 1, started_at = COALESCE(bi.started_at, now())
WHERE (bi.build_id, bi.service, bi.architecture) = (
  SELECT c.build_id, c.service, c.architecture FROM build_images c
  JOIN builds b ON b.id = c.build_id
  WHERE c.build_id = @build_id AND b.cancel_requested_at IS NULL AND b.finished_at IS NULL
    AND (c.status = 'queued' OR (c.status = 'running' AND c.lease_until < now()))
    AND (c.architecture = ANY(@architectures::text[]) OR NOT c.needs_run)
  ORDER BY c.queued_at, c.service, c.architecture
  LIMIT 1 FOR UPDATE OF c SKIP LOCKED)
RETURNING bi.*;

-- name: BuildOpenForBuilder :many
-- Builds with an image this builder could take now, oldest first: what a
-- builder polls for besides its Kafka records (a record went to another
-- replica that cannot build that architecture, or was lost).
SELECT DISTINCT c.build_id, min(c.queued_at) AS queued_at FROM build_images c
JOIN builds b ON b.id = c.build_id
WHERE c.status IN ('queued', 'running') AND b.cancel_requested_at IS NULL AND b.finished_at IS NULL
  AND (c.status = 'queued' OR c.lease_until < now())
  AND (c.architecture = ANY(@architectures::text[]) OR NOT c.needs_run)
GROUP BY c.build_id
ORDER BY queued_at
LIMIT @max_rows;

-- name: BuildImageRenew :one
-- Extends the holder's lease; no row: the lease was lost. Returns whether
-- the build's cancellation was asked for.
UPDATE build_images bi SET lease_until = now() + make_interval(secs => @lease_seconds::float8)
FROM builds b
WHERE b.id = bi.build_id AND bi.build_id = @build_id AND bi.service = @service AND bi.architecture = @architecture
  AND bi.status = 'running' AND bi.holder = @holder
RETURNING (b.cancel_requested_at IS NOT NULL)::boolean AS cancel_requested;

-- name: BuildImageFinish :execrows
-- Records the holder's outcome; 0 rows: the lease was lost meanwhile.
UPDATE build_images
SET status = @status, image = COALESCE(sqlc.narg(image), image), digest = sqlc.narg(digest),
    media_type = sqlc.narg(media_type), manifest_size = sqlc.narg(manifest_size), error = sqlc.narg(error),
    holder = NULL, lease_until = NULL, finished_at = now()
WHERE build_id = @build_id AND service = @service AND architecture = @architecture
  AND status = 'running' AND holder = @holder;

-- name: BuildImageRelease :execrows
-- Gives an image back as queued (the builder is stopping).
UPDATE build_images SET status = 'queued', holder = NULL, lease_until = NULL
WHERE build_id = @build_id AND service = @service AND architecture = @architecture
  AND status = 'running' AND holder = @holder;

-- name: BuildImagesCancelQueued :execrows
UPDATE build_images SET status = 'cancelled', finished_at = now()
WHERE build_id = @build_id AND status = 'queued';

-- name: BuildImageFailQueued :execrows
UPDATE build_images SET status = 'failed', error = @error, finished_at = now()
WHERE build_id = @build_id AND service = @service AND architecture = @architecture AND status = 'queued';

-- name: BuildStarted :exec
UPDATE builds SET status = 'running', started_at = COALESCE(started_at, now())
WHERE id = $1 AND status = 'queued';

-- name: BuildRequestCancel :one
UPDATE builds SET cancel_requested_at = COALESCE(cancel_requested_at, now())
WHERE id = $1 AND finished_at IS NULL
RETURNING *;

-- name: BuildFinish :one
UPDATE builds
SET status = @status, error = sqlc.narg(error), indexes = @indexes, finished_at = now(),
    log_key = sqlc.narg(log_key), log_stored_bytes = sqlc.narg(log_stored_bytes),
    started_at = COALESCE(started_at, now())
WHERE id = @id AND finished_at IS NULL
RETURNING *;

-- name: BuildsOpenStale :many
-- Open builds that may be ready to end: every image settled, or cancelled
-- with nothing running. A builder ends them when the one that settled the
-- last image could not (it stopped).
SELECT b.id FROM builds b
WHERE b.finished_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM build_images c WHERE c.build_id = b.id
                  AND (c.status = 'running' OR (c.status = 'queued' AND b.cancel_requested_at IS NULL)))
ORDER BY b.created_at
LIMIT 20;

-- name: BuildLogReserve :one
-- Numbers n new lines of b bytes; the caller inserts them in the same
-- transaction.
UPDATE builds SET log_seq = log_seq + @n::bigint, log_bytes = log_bytes + @b::bigint,
  log_truncated = log_truncated OR @truncated::boolean
WHERE id = @id
RETURNING log_seq, log_bytes, log_truncated;

-- name: BuildLogState :one
SELECT log_seq, log_bytes, log_truncated, (finished_at IS NOT NULL)::boolean AS finished FROM builds WHERE id = $1 FOR UPDATE;

-- name: BuildLogInsert :copyfrom
INSERT INTO build_log_lines (build_id, seq, ts, service, architecture, line) VALUES ($1, $2, $3, $4, $5, $6);

-- name: BuildLogLines :many
SELECT seq, ts, service, architecture, line FROM build_log_lines
WHERE build_id = @build_id AND seq > @after_seq
ORDER BY seq
LIMIT @max_rows;

-- name: BuildLogDelete :exec
DELETE FROM build_log_lines WHERE build_id = $1;

-- name: BuilderSeen :exec
INSERT INTO builders (holder, architectures, seen_at) VALUES (@holder, @architectures, now())
ON CONFLICT (holder) DO UPDATE SET architectures = EXCLUDED.architectures, seen_at = now();

-- name: BuilderGone :exec
DELETE FROM builders WHERE holder = $1;

-- name: BuildersLive :many
-- Builders seen within the last alive_seconds.
SELECT * FROM builders WHERE seen_at > now() - make_interval(secs => @alive_seconds::float8) ORDER BY holder;

-- name: BuildersForget :exec
DELETE FROM builders WHERE seen_at < now() - interval '1 day';

-- name: BuildImagesWaiting :many
-- Queued images of open builds that have waited longer than
-- after_seconds.
SELECT c.* FROM build_images c JOIN builds b ON b.id = c.build_id
WHERE c.status = 'queued' AND b.finished_at IS NULL AND b.cancel_requested_at IS NULL
  AND c.queued_at < now() - make_interval(secs => @after_seconds::float8)
ORDER BY c.queued_at
LIMIT 100;
