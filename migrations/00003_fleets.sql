-- +goose Up
-- Fleets group devices of one architecture that run the same releases.
CREATE TABLE fleets (
  id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id            uuid NOT NULL REFERENCES orgs (id) ON DELETE RESTRICT,
  name              text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
  architecture      text NOT NULL,
  release_policy    text NOT NULL DEFAULT 'track_latest' CHECK (release_policy IN ('track_latest', 'pinned')),
  pinned_release_id uuid,
  tags              jsonb NOT NULL DEFAULT '{}',
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT fleets_name_key UNIQUE (org_id, name),
  CONSTRAINT fleets_pin_check CHECK ((release_policy = 'pinned') = (pinned_release_id IS NOT NULL))
);
CREATE INDEX fleets_org_idx ON fleets (org_id, created_at, id);
CREATE TRIGGER fleets_updated_at BEFORE UPDATE ON fleets FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();

-- Releases are immutable once final; services holds each service's image
-- per architecture and its compose-like settings.
CREATE TABLE releases (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id       uuid NOT NULL,
  fleet_id     uuid NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
  version      text NOT NULL DEFAULT '',
  status       text NOT NULL CHECK (status IN ('draft', 'final', 'failed')),
  services     jsonb NOT NULL,
  tags         jsonb NOT NULL DEFAULT '{}',
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  finalized_at timestamptz,
  CONSTRAINT releases_final_check CHECK ((status = 'final') = (finalized_at IS NOT NULL))
);
CREATE INDEX releases_fleet_idx ON releases (fleet_id, created_at DESC, id DESC);
CREATE INDEX releases_latest_final_idx ON releases (fleet_id, finalized_at DESC, id DESC) WHERE status = 'final';
CREATE TRIGGER releases_updated_at BEFORE UPDATE ON releases FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();
ALTER TABLE fleets ADD CONSTRAINT fleets_pinned_release_fkey FOREIGN KEY (pinned_release_id) REFERENCES releases (id);

CREATE TABLE provisioning_keys (
  id          uuid PRIMARY KEY,
  org_id      uuid NOT NULL,
  fleet_id    uuid NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
  name        text NOT NULL,
  prefix      text NOT NULL,
  secret_hash bytea NOT NULL,
  created_by  uuid REFERENCES users (id) ON DELETE SET NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz,
  max_uses    integer CHECK (max_uses > 0),
  uses        integer NOT NULL DEFAULT 0,
  revoked_at  timestamptz
);
CREATE INDEX provisioning_keys_fleet_idx ON provisioning_keys (fleet_id, created_at DESC, id DESC);

-- A device's id is the uuid it generated for itself. Reported state is what
-- the device last said about itself; online means it reported recently.
CREATE TABLE devices (
  id                 uuid PRIMARY KEY,
  org_id             uuid NOT NULL,
  fleet_id           uuid NOT NULL REFERENCES fleets (id) ON DELETE RESTRICT,
  name               text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
  device_type        text NOT NULL,
  architecture       text NOT NULL,
  public_key         bytea NOT NULL CHECK (length(public_key) = 32),
  provisioned_with   uuid,
  pinned_release_id  uuid REFERENCES releases (id),
  tags               jsonb NOT NULL DEFAULT '{}',
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  last_seen_at       timestamptz,
  running_release_id uuid,
  os_version         text NOT NULL DEFAULT '',
  agent_version      text NOT NULL DEFAULT '',
  reported           jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX devices_org_idx ON devices (org_id, created_at, id);
CREATE INDEX devices_fleet_idx ON devices (fleet_id, created_at, id);
CREATE INDEX devices_tags_idx ON devices USING gin (tags jsonb_path_ops);
CREATE INDEX devices_name_idx ON devices (org_id, name text_pattern_ops);
CREATE TRIGGER devices_updated_at BEFORE UPDATE ON devices FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();

-- One-time ids of device assertions: a jti is accepted once per device.
CREATE TABLE IF NOT EXISTS device_assertion_jtis (
  device_id  uuid NOT NULL,
  jti        text NOT NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (device_id, jti)
);

-- Configuration variables at four scopes: fleet, fleet + service, device,
-- device + service ('' service means every service).
CREATE TABLE config_variables (
  id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id     uuid NOT NULL,
  fleet_id   uuid NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
  device_id  uuid REFERENCES devices (id) ON DELETE CASCADE,
  service    text NOT NULL DEFAULT '',
  name       text NOT NULL CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]*$' AND upper(name) NOT LIKE 'FLOCK\_%'),
  value      text NOT NULL,
  secret     boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT config_variables_scope_key UNIQUE NULLS NOT DISTINCT (fleet_id, device_id, service, name)
);
CREATE INDEX config_variables_device_idx ON config_variables (device_id) WHERE device_id IS NOT NULL;
CREATE TRIGGER config_variables_updated_at BEFORE UPDATE ON config_variables FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();

-- Registrations are recorded with the provisioning key as the actor.
ALTER TABLE audit_events DROP CONSTRAINT audit_events_actor_type_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_actor_type_check
  CHECK (actor_type IN ('user', 'api_key', 'provisioning_key', 'device'));

-- +goose Down
ALTER TABLE audit_events DROP CONSTRAINT audit_events_actor_type_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_actor_type_check CHECK (actor_type IN ('user', 'api_key'));
DROP TABLE config_variables;
DROP TABLE device_assertion_jtis;
DROP TABLE devices;
DROP TABLE provisioning_keys;
ALTER TABLE fleets DROP CONSTRAINT fleets_pinned_release_fkey;
DROP TABLE releases;
DROP TABLE fleets;
