-- +goose Up
-- Commands sent to devices (POST /v1/devices/{id}/commands). A command is
-- pending until the device acknowledges it (delivered), then succeeded or
-- failed as the device reports; one the device has not finished by
-- expires_at becomes expired. Statuses only move forward; the last three
-- are final.
CREATE TABLE commands (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id           uuid NOT NULL,
  fleet_id         uuid NOT NULL,
  device_id        uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
  type             text NOT NULL CHECK (type IN ('reboot', 'restart_service', 'identify')),
  service          text CHECK (length(service) BETWEEN 1 AND 63),
  status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'succeeded', 'failed', 'expired')),
  error            text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  expires_at       timestamptz NOT NULL,
  delivered_at     timestamptz,
  completed_at     timestamptz,
  -- Set once the command and its pending event went to Kafka after the
  -- creating transaction committed; the commands worker sends those it
  -- finds unset, so a crash between commit and publish loses neither.
  announced_at     timestamptz,
  created_by_type  text NOT NULL,
  created_by_id    uuid NOT NULL,
  created_by_label text NOT NULL,
  CONSTRAINT commands_service_type_check CHECK ((type = 'restart_service') = (service IS NOT NULL)),
  CONSTRAINT commands_final_check CHECK ((status IN ('succeeded', 'failed', 'expired')) = (completed_at IS NOT NULL))
);
-- A device's commands, newest first (the list, keyset).
CREATE INDEX commands_device_idx ON commands (device_id, created_at DESC, id DESC);
-- The open commands: redelivered when their device connects, expired by
-- the worker's pass.
CREATE INDEX commands_open_device_idx ON commands (device_id) WHERE status IN ('pending', 'delivered');
CREATE INDEX commands_open_expiry_idx ON commands (expires_at) WHERE status IN ('pending', 'delivered');
CREATE INDEX commands_unannounced_idx ON commands (created_at) WHERE announced_at IS NULL;

-- +goose Down
DROP TABLE commands;
