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
-- lines per service, so two services can share a (ts, seq) pair. pattern is
-- an ILIKE pattern the store builds from plain text (wildcards escaped).
SELECT * FROM device_logs
WHERE device_id = @device_id
  AND (sqlc.narg(service)::text IS NULL OR service = sqlc.narg(service))
  AND (sqlc.narg(since)::timestamptz IS NULL OR ts >= sqlc.narg(since))
  AND (sqlc.narg(until)::timestamptz IS NULL OR ts < sqlc.narg(until))
  AND (sqlc.narg(pattern)::text IS NULL OR line ILIKE sqlc.narg(pattern))
  AND (sqlc.narg(before_ts)::timestamptz IS NULL
       OR (ts, service, seq) < (sqlc.narg(before_ts), sqlc.narg(before_service)::text, sqlc.narg(before_seq)::bigint))
ORDER BY ts DESC, service DESC, seq DESC
LIMIT @max_rows;

-- name: DeviceLogListOldestFirst :many
-- DeviceLogList in the other direction, for a follower replaying history:
-- the same index read backwards.
SELECT * FROM device_logs
WHERE device_id = @device_id
  AND (sqlc.narg(service)::text IS NULL OR service = sqlc.narg(service))
  AND (sqlc.narg(since)::timestamptz IS NULL OR ts >= sqlc.narg(since))
  AND (sqlc.narg(until)::timestamptz IS NULL OR ts < sqlc.narg(until))
  AND (sqlc.narg(pattern)::text IS NULL OR line ILIKE sqlc.narg(pattern))
  AND (sqlc.narg(after_ts)::timestamptz IS NULL
       OR (ts, service, seq) > (sqlc.narg(after_ts), sqlc.narg(after_service)::text, sqlc.narg(after_seq)::bigint))
ORDER BY ts, service, seq
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

-- name: TelemetrySeries :many
-- Samples of some metrics of a device aggregated per step, steps starting
-- at origin plus multiples of the step (origin is the start of the step
-- holding since). A step's last value is the largest at its newest
-- instant, and its unit the largest there too, as ClickHouse's argMax over
-- (ts, value) gives: looked up per step through the series index rather
-- than carried through the aggregation, whose per-step array sorts made a
-- day of ten 1 Hz metrics take 2.3 s instead of 1.6 s (BenchmarkSeries).
WITH steps AS (
  SELECT s.name, date_bin(sqlc.arg(step_us)::bigint * interval '1 microsecond', s.ts, sqlc.arg(origin)::timestamptz) AS start,
         count(*) AS n, min(s.value) AS lo, max(s.value) AS hi, avg(s.value) AS mean, max(s.ts) AS newest
  FROM telemetry_samples s
  WHERE s.device_id = @device_id AND s.name = ANY(@names::text[])
    AND s.ts >= @since AND s.ts < @until
  GROUP BY s.name, start
)
SELECT st.name, st.start::timestamptz AS start, st.n::bigint AS count, st.lo::float8 AS min, st.hi::float8 AS max,
       st.mean::float8 AS avg, l.value::float8 AS last, l.unit::text AS unit
FROM steps st
CROSS JOIN LATERAL (
  SELECT max(s.value) AS value, max(s.unit) AS unit FROM telemetry_samples s
  WHERE s.device_id = @device_id AND s.name = st.name AND s.ts = st.newest
) l
ORDER BY st.name, st.start;

-- name: TelemetryMetricNames :many
-- The distinct metric names of a device, each with its newest sample's unit
-- and time. The recursion hops from one name to the next through the series
-- index (a loose index scan) instead of reading every sample of the device.
WITH RECURSIVE names AS (
  (SELECT s.name FROM telemetry_samples s WHERE s.device_id = @device_id ORDER BY s.name LIMIT 1)
  UNION ALL
  SELECT (SELECT s.name FROM telemetry_samples s WHERE s.device_id = @device_id AND s.name > n.name ORDER BY s.name LIMIT 1)
  FROM names n WHERE n.name IS NOT NULL
)
SELECT n.name::text AS name, l.unit, l.ts
FROM names n
CROSS JOIN LATERAL (
  SELECT s.unit, s.ts FROM telemetry_samples s
  WHERE s.device_id = @device_id AND s.name = n.name
  ORDER BY s.ts DESC, s.unit DESC LIMIT 1
) l
WHERE n.name IS NOT NULL;

-- name: UpdateEventInsert :exec
-- As DeviceLogInsert: one statement per batch, redeliveries skipped. The
-- arrays cannot hold NULL through sqlc, so the nil UUID and progress -1
-- stand for "not sent".
INSERT INTO update_events (device_id, org_id, id, ts, received_at, type, release_id, service, progress, error)
SELECT unnest(@device_ids::uuid[]), unnest(@org_ids::uuid[]), unnest(@ids::uuid[]), unnest(@ts::timestamptz[]),
       unnest(@received_ats::timestamptz[]), unnest(@types::text[]),
       nullif(unnest(@release_ids::uuid[]), '00000000-0000-0000-0000-000000000000'::uuid),
       unnest(@services::text[]), nullif(unnest(@progresses::smallint[]), -1), unnest(@errors::text[])
ON CONFLICT (device_id, id) DO NOTHING;

-- name: UpdateEventList :many
-- Newest first, keyset pagination on (ts, id), unique per device.
SELECT * FROM update_events
WHERE device_id = @device_id
  AND (sqlc.narg(since)::timestamptz IS NULL OR ts >= sqlc.narg(since))
  AND (sqlc.narg(until)::timestamptz IS NULL OR ts < sqlc.narg(until))
  AND (sqlc.narg(before_ts)::timestamptz IS NULL
       OR (ts, id) < (sqlc.narg(before_ts), sqlc.narg(before_id)::uuid))
ORDER BY ts DESC, id DESC
LIMIT @max_rows;

-- name: TelemetryDeleteBefore :one
-- Retention: one statement, so the tables are trimmed atomically and the
-- caller gets one total.
WITH samples AS (DELETE FROM telemetry_samples s WHERE s.ts < @cutoff RETURNING 1),
     logs AS (DELETE FROM device_logs l WHERE l.ts < @cutoff RETURNING 1),
     conns AS (DELETE FROM connectivity_events c WHERE c.at < @cutoff RETURNING 1),
     updates AS (DELETE FROM update_events u WHERE u.ts < @cutoff RETURNING 1)
SELECT ((SELECT count(*) FROM samples) + (SELECT count(*) FROM logs) + (SELECT count(*) FROM conns)
        + (SELECT count(*) FROM updates))::bigint AS deleted;
