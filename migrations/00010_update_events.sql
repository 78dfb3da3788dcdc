-- +goose Up
-- Update progress a device reports on its MQTT `events` channel, kept for
-- the API's device-update-event:list. The same conventions as the telemetry
-- tables of 00004: no foreign key (the rows arrive in volume and a device's
-- history outlives its row), retention by age through a BRIN index on ts.
--
-- id is the device's own id of the event, stable across redeliveries, so
-- the primary key turns a QoS 1 redelivery into a no-op. It is scoped by
-- device: one device reusing another's id cannot hide that device's event.
-- service and error are '' when the device sent none, as in ClickHouse;
-- release_id and progress are NULL then (0 is a progress).
CREATE TABLE update_events (
  device_id   uuid NOT NULL,
  org_id      uuid NOT NULL,
  id          uuid NOT NULL,
  ts          timestamptz NOT NULL,
  received_at timestamptz NOT NULL,
  type        text NOT NULL,
  release_id  uuid,
  service     text NOT NULL DEFAULT '',
  progress    smallint CHECK (progress BETWEEN 0 AND 100),
  error       text NOT NULL DEFAULT '',
  PRIMARY KEY (device_id, id)
);
-- The read order exactly (newest first, ties by id), so a keyset page is an
-- index range scan with no sort.
CREATE INDEX update_events_device_ts_idx ON update_events (device_id, ts DESC, id DESC);
CREATE INDEX update_events_ts_brin ON update_events USING brin (ts);

-- +goose Down
DROP TABLE update_events;
