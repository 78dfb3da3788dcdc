-- name: AuditEventInsert :exec
INSERT INTO audit_events (id, org_id, occurred_at, actor_type, actor_id, actor_label, operation, target_id, request_id, outcome, status)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11);

-- name: AuditEventList :many
-- Newest first within [since, until), keyset pagination on (occurred_at, id).
SELECT * FROM audit_events
WHERE org_id = @org_id
  AND (sqlc.narg(since)::timestamptz IS NULL OR occurred_at >= sqlc.narg(since))
  AND (sqlc.narg(until)::timestamptz IS NULL OR occurred_at < sqlc.narg(until))
  AND (sqlc.narg(before_time)::timestamptz IS NULL OR (occurred_at, id) < (sqlc.narg(before_time), sqlc.narg(before_id)::uuid))
ORDER BY occurred_at DESC, id DESC
LIMIT @max_rows;
