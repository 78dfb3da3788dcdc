-- name: TelemetrySampleCopy :copyfrom
-- Samples have no natural key to deduplicate on, so they take COPY, the
-- cheapest bulk path.
INSERT INTO telemetry_samples (device_id, org_id, ts, name, value, unit, labels)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: TelemetryList :many
-- One series of a device, newest first within [since, until); either bound
-- may be null.
SELECT * FROM telemetry_samples
WHERE device_id = @device_id
  AND name = @name
  AND (sqlc.narg(since)::timestamptz IS NULL OR ts >= sqlc.narg(since))
  AND (sqlc.narg(until)::timestamptz IS NULL OR ts < sqlc.narg(until))
ORDER BY ts DESC
LIMIT @max_rows;

-- name: DeviceLogInsert :exec
-- A whole batch in one statement: the arrays are the batch's columns, zipped
-- by the parallel unnests (sqlc cannot type the multi-argument unnest). A line
-- already stored (a QoS 1 redelivery, possibly within the same batch) is
-- skipped; the conflict target is named so no other unique index can make
-- this statement silently drop rows.
INSERT INTO device_logs (device_id, org_id, service, seq, ts, stream, line)
SELECT unnest(@device_ids::uuid[]), unnest(@org_ids::uuid[]), unnest(@services::text[]), unnest(@seqs::bigint[]),
       unnest(@ts::timestamptz[]), unnest(@streams::text[]), unnest(@lines::text[])
ON CONFLICT (device_id, service, seq) DO NOTHING;

-- name: DeviceLogList :many
-- Newest first, keyset pagination on (ts, service, seq): seq alone numbers
-- lines per service, so two services can share a (ts, seq) pair.
SELECT * FROM device_logs
WHERE device_id = @device_id
  AND (sqlc.narg(service)::text IS NULL OR service = sqlc.narg(service))
  AND (sqlc.narg(since)::timestamptz IS NULL OR ts >= sqlc.narg(since))
  AND (sqlc.narg(before_ts)::timestamptz IS NULL
       OR (ts, service, seq) < (sqlc.narg(before_ts), sqlc.narg(before_service)::text, sqlc.narg(before_seq)::bigint))
ORDER BY ts DESC, service DESC, seq DESC
LIMIT @max_rows;

-- name: ConnectivityInsert :exec
-- As DeviceLogInsert: one statement per batch, redeliveries skipped.
INSERT INTO connectivity_events (device_id, org_id, connection_seq, event, at)
SELECT unnest(@device_ids::uuid[]), unnest(@org_ids::uuid[]), unnest(@connection_seqs::bigint[]),
       unnest(@events::text[]), unnest(@ats::timestamptz[])
ON CONFLICT (device_id, connection_seq, event) DO NOTHING;

-- name: ConnectivityList :many
-- Newest first, keyset pagination on (at, connection_seq, event), which is
-- unique per device. An empty before_event pages past every event of
-- (before_at, before_seq), since both event names sort after the empty string.
SELECT * FROM connectivity_events
WHERE device_id = @device_id
  AND (sqlc.narg(before_at)::timestamptz IS NULL
       OR (at, connection_seq, event) < (sqlc.narg(before_at), sqlc.narg(before_seq)::bigint, sqlc.narg(before_event)::text))
ORDER BY at DESC, connection_seq DESC, event DESC
LIMIT @max_rows;

-- name: TelemetryDeleteBefore :one
-- Retention: one statement, so the three tables are trimmed atomically and
-- the caller gets one total.
WITH samples AS (DELETE FROM telemetry_samples s WHERE s.ts < @cutoff RETURNING 1),
     logs AS (DELETE FROM device_logs l WHERE l.ts < @cutoff RETURNING 1),
     conns AS (DELETE FROM connectivity_events c WHERE c.at < @cutoff RETURNING 1)
SELECT ((SELECT count(*) FROM samples) + (SELECT count(*) FROM logs) + (SELECT count(*) FROM conns))::bigint AS deleted;
