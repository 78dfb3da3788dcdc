-- +goose Up
-- The telemetry store's PostgreSQL engine, used when ClickHouse is not
-- configured. No foreign keys to devices: these rows arrive at a high rate,
-- a key check per row would cost more than the insert, and a device's history
-- outlives its row. Retention is by age (DELETE ... WHERE ts < cutoff).
--
-- The BRIN indexes serve only that retention delete: rows arrive roughly in
-- time order, so a BRIN index finds the old ones for almost no write cost,
-- where a btree on time alone would be a second full index on every insert.

-- Samples have no natural key: a redelivered batch is stored twice, which a
-- chart tolerates and which ClickHouse would not deduplicate either.
CREATE TABLE telemetry_samples (
  device_id uuid NOT NULL,
  org_id    uuid NOT NULL,
  ts        timestamptz NOT NULL,
  name      text NOT NULL,
  value     double precision NOT NULL,
  unit      text NOT NULL DEFAULT '',
  labels    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX telemetry_samples_series_idx ON telemetry_samples (device_id, name, ts DESC);
CREATE INDEX telemetry_samples_ts_brin ON telemetry_samples USING brin (ts);

-- A device numbers each service's lines; the primary key turns a QoS 1
-- redelivery into a no-op (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE device_logs (
  device_id uuid NOT NULL,
  org_id    uuid NOT NULL,
  service   text COLLATE "C" NOT NULL,
  seq       bigint NOT NULL,
  ts        timestamptz NOT NULL,
  stream    text NOT NULL CHECK (stream IN ('stdout', 'stderr')),
  line      text NOT NULL,
  PRIMARY KEY (device_id, service, seq)
);
-- Matches the read order exactly (newest first, ties broken by service and
-- seq), so a keyset page is an index range scan with no sort. service sorts
-- bytewise (COLLATE "C") so the tie order is the same as ClickHouse's.
CREATE INDEX device_logs_device_ts_idx ON device_logs (device_id, ts DESC, service DESC, seq DESC);
CREATE INDEX device_logs_ts_brin ON device_logs USING brin (ts);

-- Both events of one connection share its connection_seq; the primary key
-- makes a redelivered event a no-op.
CREATE TABLE connectivity_events (
  device_id      uuid NOT NULL,
  org_id         uuid NOT NULL,
  connection_seq bigint NOT NULL,
  event          text NOT NULL CHECK (event IN ('connected', 'disconnected')),
  at             timestamptz NOT NULL,
  PRIMARY KEY (device_id, connection_seq, event)
);
-- (at, connection_seq, event) is unique per device, which the keyset cursor
-- needs: a connect and disconnect can carry the same timestamp.
CREATE INDEX connectivity_events_device_at_idx ON connectivity_events (device_id, at DESC, connection_seq DESC, event DESC);
CREATE INDEX connectivity_events_at_brin ON connectivity_events USING brin (at);

-- +goose Down
DROP TABLE connectivity_events;
DROP TABLE device_logs;
DROP TABLE telemetry_samples;
