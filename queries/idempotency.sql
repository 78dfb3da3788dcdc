-- name: IdempotencyGet :one
SELECT * FROM idempotency_keys WHERE principal = $1 AND key = $2 AND created_at > now() - interval '24 hours';

-- name: IdempotencyInsert :execrows
-- Inside the write's own transaction: a concurrent request with the same key
-- waits here for the first to commit, then changes nothing (0 rows). A key
-- older than a day is taken over.
INSERT INTO idempotency_keys (principal, key, operation, request_hash, status, body)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (principal, key) DO UPDATE
  SET operation = EXCLUDED.operation, request_hash = EXCLUDED.request_hash, status = EXCLUDED.status,
      body = EXCLUDED.body, created_at = now()
  WHERE idempotency_keys.created_at < now() - interval '24 hours';

-- name: IdempotencyDeleteExpired :execrows
DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours';
