-- +goose Up
-- Online status from MQTT connectivity. The ingester applies each device's
-- connect and disconnect events with connection_key, the order of
-- livestate.ConnSeq (a newer connection beats everything of an older one;
-- within one connection a disconnect beats the connect), and an event whose
-- key is not above the stored one changes nothing. NULL means the device
-- never connected over MQTT; it counts as online while it reports over REST
-- (last_seen_at within 10 minutes), as before. A device is connected only
-- under some key.
--
-- reported_at is when the stored reported state arrived: last_seen_at now
-- moves with MQTT traffic too, so it no longer dates that state, and the API
-- needs the date to tell whether the live state in the KV store is newer.
ALTER TABLE devices
  ADD COLUMN connection_key bigint,
  ADD COLUMN connected      boolean NOT NULL DEFAULT false,
  ADD COLUMN reported_at    timestamptz,
  ADD CONSTRAINT devices_connected_check CHECK (NOT connected OR connection_key IS NOT NULL);

-- Until now only a report set last_seen_at. The trigger is off so the
-- backfill does not look like a change of every device.
ALTER TABLE devices DISABLE TRIGGER devices_updated_at;
UPDATE devices SET reported_at = last_seen_at WHERE last_seen_at IS NOT NULL;
ALTER TABLE devices ENABLE TRIGGER devices_updated_at;

-- The device list's online filter, by either index in list order or both
-- OR-ed: ?online=true reads the connected devices and those that never
-- connected over MQTT, ?online=false the disconnected ones, so a page of the
-- rare kind does not read every device of the organisation. Both indexes
-- change only when a device connects or disconnects (which rewrites its row
-- anyway); last_seen_at, which every message moves, stays out of every
-- index so those updates remain HOT.
CREATE INDEX devices_org_connected_idx ON devices (org_id, connected, created_at, id);
CREATE INDEX devices_never_mqtt_idx ON devices (org_id, created_at, id) WHERE connection_key IS NULL;

-- +goose Down
DROP INDEX devices_never_mqtt_idx;
DROP INDEX devices_org_connected_idx;
ALTER TABLE devices
  DROP CONSTRAINT devices_connected_check,
  DROP COLUMN reported_at,
  DROP COLUMN connected,
  DROP COLUMN connection_key;
