-- +goose Up
-- One order for reported state, whichever way it arrives. A device numbers
-- every state it reports (ReportedState.seq, in both the OpenAPI and the
-- AsyncAPI document); a state over HTTP and one over MQTT are applied only
-- when their seq is above the stored one, so neither can overwrite a newer
-- one of the other. NULL: the device never reported. The ingester now writes
-- what MQTT reports here too (running release, versions), so the device
-- list's filters see it.
ALTER TABLE devices ADD COLUMN reported_seq bigint;

ALTER TABLE devices DISABLE TRIGGER devices_updated_at;
UPDATE devices SET reported_seq = 0, reported = reported || '{"seq": 0}' WHERE reported_at IS NOT NULL;
ALTER TABLE devices ENABLE TRIGGER devices_updated_at;

-- updated_at dates what people change on a device, not its traffic: the
-- ingester updates last_seen_at, connectivity and reported state all the
-- time, and each of those fired the trigger.
DROP TRIGGER devices_updated_at ON devices;
CREATE TRIGGER devices_updated_at BEFORE UPDATE OF name, fleet_id, pinned_release_id, tags ON devices
  FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();

-- Revocation: a deleted device (however it goes: its own delete, its
-- organisation's) must lose its MQTT connection at once on every broker.
-- The notification is sent at commit, in commit order, to every listening
-- session, so each embedded broker hears of it without polling.
-- +goose StatementBegin
CREATE FUNCTION flock_notify_device_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('flock_device_revoked', OLD.id::text);
  RETURN NULL;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER devices_revoked AFTER DELETE ON devices
  FOR EACH ROW EXECUTE FUNCTION flock_notify_device_revoked();

-- +goose Down
DROP TRIGGER devices_revoked ON devices;
DROP FUNCTION flock_notify_device_revoked();
DROP TRIGGER devices_updated_at ON devices;
CREATE TRIGGER devices_updated_at BEFORE UPDATE ON devices FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();
ALTER TABLE devices DROP COLUMN reported_seq;
