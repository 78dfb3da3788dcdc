-- +goose Up
-- Fleet summary counters (GET /v1/fleets/{id}/summary, /v1/orgs/{id}/summary):
-- devices counted by connectivity, running release and update status, and a
-- rollout's devices by group and state, without reading every device.
--
-- Counters, not a materialised view: a view is as old as its last refresh,
-- and refreshing one of 100,000 devices costs a full count. Counters are
-- kept in the transaction of the change, by statement-level triggers with
-- transition tables: one trigger run per statement (the ingester changes
-- hundreds of devices in one UPDATE) that appends the statement's net
-- change, grouped, to an append-only delta table. Nothing updates a shared
-- counter row in the writer's transaction, so writers on many connections
-- neither wait for each other nor deadlock on counters. A read adds the
-- compacted counts and the deltas not folded in yet, in one snapshot; the
-- janitor folds deltas into the counts every few seconds (queries/summary.sql
-- SummaryCompact), moving them in one transaction, so a read sees each
-- delta exactly once, folded or not.

-- What a device is counted as, by the columns of the device list's online
-- filter (queries/devices.sql DeviceList): 'connected' (online over MQTT),
-- 'disconnected' (connected over MQTT before, not now: offline), 'never'
-- (never connected over MQTT, connection_key IS NULL). The list counts a
-- 'never' device online while it reports over REST; that depends on the
-- clock, which no counter follows, so the summary counts it apart.
-- +goose StatementBegin
CREATE FUNCTION flock_device_connectivity(connected boolean, connection_key bigint) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN connected THEN 'connected' WHEN connection_key IS NULL THEN 'never' ELSE 'disconnected' END
$$;
-- +goose StatementEnd

-- A device's update status, from the services of its last reported state:
-- 'unknown' when it never reported (reported_seq IS NULL); else 'failed'
-- when any reported service has status failed; else 'updating' when any is
-- downloading or installing; else 'idle' (also with no services).
-- +goose StatementBegin
CREATE FUNCTION flock_device_update_status(reported_seq bigint, reported jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN reported_seq IS NULL THEN 'unknown'
    -- Most devices are idle: one look at the services decides for them.
    WHEN NOT jsonb_path_exists(reported, '$.services[*] ? (@.status == "failed" || @.status == "downloading" || @.status == "installing")') THEN 'idle'
    WHEN jsonb_path_exists(reported, '$.services[*] ? (@.status == "failed")') THEN 'failed'
    ELSE 'updating'
  END
$$;
-- +goose StatementEnd

-- The compacted counts: devices of a fleet with this connectivity, running
-- release (NULL: none reported) and update status. Rows that reach 0 are
-- deleted by the compaction.
CREATE TABLE device_summary (
  fleet_id           uuid NOT NULL,
  connectivity       text NOT NULL,
  running_release_id uuid,
  update_status      text NOT NULL,
  devices            bigint NOT NULL,
  CONSTRAINT device_summary_key UNIQUE NULLS NOT DISTINCT (fleet_id, connectivity, running_release_id, update_status)
);

-- Changes not folded into device_summary yet: append-only (no key, no
-- foreign key: an insert checks nothing and locks nothing shared).
CREATE TABLE device_summary_deltas (
  fleet_id           uuid NOT NULL,
  connectivity       text NOT NULL,
  running_release_id uuid,
  update_status      text NOT NULL,
  devices            bigint NOT NULL
);
CREATE INDEX device_summary_deltas_fleet_idx ON device_summary_deltas (fleet_id);

-- A rollout's devices by group and state, compacted and pending, the same
-- way.
CREATE TABLE rollout_summary (
  rollout_id uuid NOT NULL,
  group_idx  integer NOT NULL,
  state      text NOT NULL,
  devices    bigint NOT NULL,
  PRIMARY KEY (rollout_id, group_idx, state)
);
CREATE TABLE rollout_summary_deltas (
  rollout_id uuid NOT NULL,
  group_idx  integer NOT NULL,
  state      text NOT NULL,
  devices    bigint NOT NULL
);
CREATE INDEX rollout_summary_deltas_rollout_idx ON rollout_summary_deltas (rollout_id);

-- One trigger function per table, for INSERT, UPDATE and DELETE. An UPDATE
-- pairs each row's old and new version and writes only the rows whose
-- counted values changed: most updates of devices move last_seen_at alone
-- and must cost no more than the pairing. A new reported state always comes
-- with a higher reported_seq (00007; DeviceReport and DevicesApplyState set
-- both), so comparing the seq finds every change of reported without
-- comparing the documents, which cost as much again as the pairing.
-- +goose StatementBegin
CREATE FUNCTION flock_device_summary_delta() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO device_summary_deltas (fleet_id, connectivity, running_release_id, update_status, devices)
    SELECT fleet_id, flock_device_connectivity(connected, connection_key), running_release_id,
           flock_device_update_status(reported_seq, reported), count(*)
    FROM new_devices GROUP BY 1, 2, 3, 4;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO device_summary_deltas (fleet_id, connectivity, running_release_id, update_status, devices)
    SELECT fleet_id, flock_device_connectivity(connected, connection_key), running_release_id,
           flock_device_update_status(reported_seq, reported), -count(*)
    FROM old_devices GROUP BY 1, 2, 3, 4;
  ELSE
    INSERT INTO device_summary_deltas (fleet_id, connectivity, running_release_id, update_status, devices)
    SELECT k.fleet_id, k.connectivity, k.running_release_id, k.update_status, sum(k.devices)
    FROM old_devices o JOIN new_devices n ON n.id = o.id
    CROSS JOIN LATERAL (VALUES
      (o.fleet_id, flock_device_connectivity(o.connected, o.connection_key), o.running_release_id,
       flock_device_update_status(o.reported_seq, o.reported), -1),
      (n.fleet_id, flock_device_connectivity(n.connected, n.connection_key), n.running_release_id,
       flock_device_update_status(n.reported_seq, n.reported), 1)
    ) AS k (fleet_id, connectivity, running_release_id, update_status, devices)
    WHERE o.fleet_id <> n.fleet_id OR o.connected <> n.connected
       OR (o.connection_key IS NULL) <> (n.connection_key IS NULL)
       OR o.running_release_id IS DISTINCT FROM n.running_release_id
       OR o.reported_seq IS DISTINCT FROM n.reported_seq
    GROUP BY 1, 2, 3, 4
    HAVING sum(k.devices) <> 0;
  END IF;
  RETURN NULL;
END;
$$;
-- +goose StatementEnd

-- +goose StatementBegin
CREATE FUNCTION flock_rollout_summary_delta() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO rollout_summary_deltas (rollout_id, group_idx, state, devices)
    SELECT rollout_id, group_idx, state, count(*) FROM new_rollout_devices GROUP BY 1, 2, 3;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO rollout_summary_deltas (rollout_id, group_idx, state, devices)
    SELECT rollout_id, group_idx, state, -count(*) FROM old_rollout_devices GROUP BY 1, 2, 3;
  ELSE
    INSERT INTO rollout_summary_deltas (rollout_id, group_idx, state, devices)
    SELECT k.rollout_id, k.group_idx, k.state, sum(k.devices)
    FROM old_rollout_devices o
    JOIN new_rollout_devices n ON n.rollout_id = o.rollout_id AND n.device_id = o.device_id
    CROSS JOIN LATERAL (VALUES (o.rollout_id, o.group_idx, o.state, -1), (n.rollout_id, n.group_idx, n.state, 1))
      AS k (rollout_id, group_idx, state, devices)
    WHERE o.group_idx <> n.group_idx OR o.state <> n.state
    GROUP BY 1, 2, 3
    HAVING sum(k.devices) <> 0;
  END IF;
  RETURN NULL;
END;
$$;
-- +goose StatementEnd

-- The triggers come before the backfill: creating them locks out writers
-- of devices and rollout_devices until this migration commits, so the
-- backfill counts every row and no change slips between the two.
CREATE TRIGGER devices_summary_insert AFTER INSERT ON devices
  REFERENCING NEW TABLE AS new_devices FOR EACH STATEMENT EXECUTE FUNCTION flock_device_summary_delta();
CREATE TRIGGER devices_summary_update AFTER UPDATE ON devices
  REFERENCING OLD TABLE AS old_devices NEW TABLE AS new_devices FOR EACH STATEMENT EXECUTE FUNCTION flock_device_summary_delta();
CREATE TRIGGER devices_summary_delete AFTER DELETE ON devices
  REFERENCING OLD TABLE AS old_devices FOR EACH STATEMENT EXECUTE FUNCTION flock_device_summary_delta();
CREATE TRIGGER rollout_devices_summary_insert AFTER INSERT ON rollout_devices
  REFERENCING NEW TABLE AS new_rollout_devices FOR EACH STATEMENT EXECUTE FUNCTION flock_rollout_summary_delta();
CREATE TRIGGER rollout_devices_summary_update AFTER UPDATE ON rollout_devices
  REFERENCING OLD TABLE AS old_rollout_devices NEW TABLE AS new_rollout_devices FOR EACH STATEMENT EXECUTE FUNCTION flock_rollout_summary_delta();
CREATE TRIGGER rollout_devices_summary_delete AFTER DELETE ON rollout_devices
  REFERENCING OLD TABLE AS old_rollout_devices FOR EACH STATEMENT EXECUTE FUNCTION flock_rollout_summary_delta();

INSERT INTO device_summary (fleet_id, connectivity, running_release_id, update_status, devices)
SELECT fleet_id, flock_device_connectivity(connected, connection_key), running_release_id,
       flock_device_update_status(reported_seq, reported), count(*)
FROM devices GROUP BY 1, 2, 3, 4;
INSERT INTO rollout_summary (rollout_id, group_idx, state, devices)
SELECT rollout_id, group_idx, state, count(*) FROM rollout_devices GROUP BY 1, 2, 3;

-- +goose Down
DROP TRIGGER rollout_devices_summary_delete ON rollout_devices;
DROP TRIGGER rollout_devices_summary_update ON rollout_devices;
DROP TRIGGER rollout_devices_summary_insert ON rollout_devices;
DROP TRIGGER devices_summary_delete ON devices;
DROP TRIGGER devices_summary_update ON devices;
DROP TRIGGER devices_summary_insert ON devices;
DROP FUNCTION flock_rollout_summary_delta();
DROP FUNCTION flock_device_summary_delta();
DROP TABLE rollout_summary_deltas;
DROP TABLE rollout_summary;
DROP TABLE device_summary_deltas;
DROP TABLE device_summary;
DROP FUNCTION flock_device_update_status(bigint, jsonb);
DROP FUNCTION flock_device_connectivity(boolean, bigint);
