-- The ClickHouse store's tables. NewClickHouse runs each statement at start,
-- so they must stay idempotent, and they must be accepted by Debian's
-- ClickHouse 18.16 as well as by current releases: no DateTime64, TTL,
-- LowCardinality or Map. Statements are split at semicolons, so none may
-- appear inside a comment.
--
-- Times are Int64 microseconds since the Unix epoch, UTC: 18.16 has no
-- sub-second time type, and one integer keeps range filters and the keyset
-- cursor to plain comparisons. Each table is partitioned by UTC day so that
-- retention drops whole partitions instead of rewriting parts. A partition is
-- named by its day number since the epoch rather than by toYYYYMMDD, whose
-- calendar ends in 2105 on 18.16 and which wraps times outside 1970-2106;
-- plain division has no range. The divisor is cast to Int64 because 18.16
-- divides an Int64 by a UInt64 literal as unsigned and files times before
-- 1970 under day 213503982. Division truncates toward zero, so day 0 also
-- holds the last day before the epoch: still all older than any cutoff that
-- drops it.

-- Samples have no natural key, so a plain MergeTree: a redelivered batch is
-- stored twice, as in PostgreSQL. Sorted for the one read, a series of one
-- device by time. Labels are parallel arrays (18.16 has no Map), keys sorted.
CREATE TABLE IF NOT EXISTS telemetry_samples (
  device_id    UUID,
  org_id       UUID,
  ts_us        Int64,
  name         String,
  value        Float64,
  unit         String,
  label_keys   Array(String),
  label_values Array(String)
) ENGINE = MergeTree()
PARTITION BY intDiv(ts_us, toInt64(86400000000))
ORDER BY (device_id, name, ts_us);

-- The sorting key is the natural key, so merges keep one row per line and
-- reads with FINAL never show a redelivery that is not merged yet. The enum
-- refuses any other stream, failing the whole insert as PostgreSQL's CHECK
-- does.
CREATE TABLE IF NOT EXISTS device_logs (
  device_id UUID,
  org_id    UUID,
  service   String,
  seq       Int64,
  ts_us     Int64,
  stream    Enum8('stdout' = 1, 'stderr' = 2),
  line      String
) ENGINE = ReplacingMergeTree()
PARTITION BY intDiv(ts_us, toInt64(86400000000))
ORDER BY (device_id, service, seq);

-- As device_logs. Enums sort by number, not by name: the numbers follow the
-- names' byte order so ORDER BY event matches PostgreSQL's text order
-- (disconnected before connected when descending).
CREATE TABLE IF NOT EXISTS connectivity_events (
  device_id      UUID,
  org_id         UUID,
  connection_seq Int64,
  event          Enum8('connected' = 1, 'disconnected' = 2),
  at_us          Int64
) ENGINE = ReplacingMergeTree()
PARTITION BY intDiv(at_us, toInt64(86400000000))
ORDER BY (device_id, connection_seq, event);

-- Update progress events, keyed by the device's own event id, which is
-- stable across redeliveries, so the table deduplicates as device_logs
-- does. The id is kept as its canonical text: ClickHouse orders UUID values
-- by their second half first, and the keyset cursor needs the byte order
-- PostgreSQL's uuid has, which lowercase hex text has too. release_id is ''
-- and progress -1 when the device sent none (no Nullable: cheaper, and 0 is
-- a progress). type is text, not an enum, so a type the AsyncAPI document
-- adds later needs no change of this table: the ingester stores only
-- events the schema accepted. A merge keeps the row of the highest keep,
-- which the store sets to sort the earliest received copy highest (18.16
-- takes only an unsigned version), so a redelivery received later never
-- replaces the event, as in PostgreSQL.
CREATE TABLE IF NOT EXISTS update_events (
  device_id   UUID,
  org_id      UUID,
  id          String,
  ts_us       Int64,
  received_us Int64,
  type        String,
  release_id  String,
  service     String,
  progress    Int8,
  error       String,
  keep        UInt64
) ENGINE = ReplacingMergeTree(keep)
PARTITION BY intDiv(ts_us, toInt64(86400000000))
ORDER BY (device_id, id);
