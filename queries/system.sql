-- name: DatabaseVersion :one
-- The server's version and the newest applied migration, for /v1/version.
SELECT
  current_setting('server_version')::text AS server_version,
  coalesce((SELECT max(version_id) FROM goose_db_version WHERE is_applied), 0)::bigint AS schema_version;

-- name: Ping :one
-- Readiness: proves a pooled connection can run a query, not only connect.
SELECT 1::int AS ok;
