-- name: DeltaCreate :one
-- A new delta, pending; nothing when the pair exists (DeltaGetByPair then
-- reads it: a statement of its own sees a row another request just
-- committed).
INSERT INTO image_deltas (org_id, from_repo, from_digest, to_repo, to_digest, architecture)
VALUES (@org_id, @from_repo, @from_digest, @to_repo, @to_digest, @architecture)
ON CONFLICT (org_id, from_digest, to_digest, architecture) DO NOTHING
RETURNING *;

-- name: DeltaGetByPair :one
SELECT * FROM image_deltas
WHERE org_id = @org_id AND from_digest = @from_digest AND to_digest = @to_digest AND architecture = @architecture;

-- name: DeltaGet :one
SELECT * FROM image_deltas WHERE id = $1;

-- name: DeltaRerequest :one
-- Marks a delta's request as published again when it seems lost: pending
-- and last requested longer than after_seconds ago, or computing under a
-- lease that ran out (its worker stopped). Of several replicas asking at
-- once, one gets the row and publishes.
UPDATE image_deltas SET requested_at = now()
WHERE id = @id
  AND requested_at < now() - make_interval(secs => @after_seconds::float8)
  AND (state = 'pending' OR (state = 'computing' AND lease_until < now()))
RETURNING *;

-- name: DeltaClaim :one
-- Takes a delta to compute: pending, or computing under a lease that ran
-- out. Nothing when it is done or another worker holds it.
UPDATE image_deltas
SET state = 'computing', lease_holder = @holder, lease_until = now() + make_interval(secs => @lease_seconds::float8),
    attempts = attempts + 1
WHERE id = @id AND (state = 'pending' OR (state = 'computing' AND lease_until < now()))
RETURNING *;

-- name: DeltaRenew :execrows
-- Extends the holder's lease; 0 rows: the lease was lost (it ran out and
-- another worker took the delta).
UPDATE image_deltas SET lease_until = now() + make_interval(secs => @lease_seconds::float8)
WHERE id = @id AND state = 'computing' AND lease_holder = @holder;

-- name: DeltaFinish :execrows
-- Records the outcome (ready, not_smaller or failed) of the holder's
-- computation; 0 rows: the lease was lost meanwhile.
UPDATE image_deltas
SET state = @state, blob_key = sqlc.narg(blob_key), size = sqlc.narg(size), layers_size = sqlc.narg(layers_size),
    error = @error, lease_holder = NULL, lease_until = NULL, computed_at = now()
WHERE id = @id AND state = 'computing' AND lease_holder = @holder;

-- name: DeltaRelease :execrows
-- Gives a delta back as pending after a failure worth retrying (the
-- registry or the blob store did not answer); the next request takes it.
UPDATE image_deltas SET state = 'pending', error = @error, lease_holder = NULL, lease_until = NULL
WHERE id = @id AND state = 'computing' AND lease_holder = @holder;

-- name: DeltaLost :one
-- A ready delta whose object is gone from the blob store: pending again, to
-- be computed anew.
UPDATE image_deltas SET state = 'pending', blob_key = NULL, size = NULL, requested_at = now()
WHERE id = @id AND state = 'ready' AND blob_key = @blob_key
RETURNING *;
