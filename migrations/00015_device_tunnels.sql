-- +goose Up
-- Remote access (issue 16): each device's WireGuard key and overlay
-- address, the tunnel servers' shared key, who may open tunnels in an
-- organisation, each device's public URL, and every tunnel session.

-- A device registers its WireGuard public key and keeps its overlay address
-- across key changes. The address is the overlay prefix plus host, which a
-- sequence hands out, so no two devices ever share one.
CREATE TABLE device_tunnels (
  device_id  uuid PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
  public_key bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
  host       bigint NOT NULL UNIQUE CHECK (host >= 2),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER device_tunnels_updated_at BEFORE UPDATE ON device_tunnels FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();
-- Host 1 is the tunnel servers' own address.
CREATE SEQUENCE device_tunnel_host_seq START WITH 2;

-- The tunnel servers' private key when FLOCK_TUNNEL_PRIVATE_KEY is unset:
-- made once, shared by every replica (devices reach any of them with the
-- same server key).
CREATE TABLE tunnel_server_key (
  singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  private_key bytea NOT NULL CHECK (length(private_key) = 32),
  created_at  timestamptz NOT NULL DEFAULT now()
);

-- The least role that may open a tunnel to the organisation's devices.
ALTER TABLE orgs ADD COLUMN tunnel_min_role org_role NOT NULL DEFAULT 'developer';

-- A device's public URL (<uuid>.devices.<domain>): off until its owner
-- turns it on, and the device port it reaches.
ALTER TABLE devices
  ADD COLUMN public_url_enabled boolean NOT NULL DEFAULT false,
  ADD COLUMN public_url_port integer NOT NULL DEFAULT 80 CHECK (public_url_port BETWEEN 1 AND 65535);

-- One row per tunnel session: the audit of remote access (who, which
-- device, which port, when, how long, bytes). It outlives the device.
-- alive_until is renewed while the session runs, so a replica that died
-- mid-session leaves a row that stops counting towards the limits.
CREATE TABLE tunnel_sessions (
  id                uuid PRIMARY KEY,
  org_id            uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
  device_id         uuid NOT NULL,
  actor_type        text NOT NULL,
  actor_id          uuid NOT NULL,
  actor_label       text NOT NULL,
  port              integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
  request_id        text NOT NULL DEFAULT '',
  started_at        timestamptz NOT NULL DEFAULT now(),
  ended_at          timestamptz,
  alive_until       timestamptz NOT NULL,
  bytes_to_device   bigint NOT NULL DEFAULT 0,
  bytes_from_device bigint NOT NULL DEFAULT 0,
  outcome           text NOT NULL DEFAULT ''
);
CREATE INDEX tunnel_sessions_device_idx ON tunnel_sessions (device_id, started_at DESC, id DESC);
CREATE INDEX tunnel_sessions_open_device_idx ON tunnel_sessions (device_id) WHERE ended_at IS NULL;
CREATE INDEX tunnel_sessions_open_actor_idx ON tunnel_sessions (actor_id) WHERE ended_at IS NULL;

-- +goose Down
DROP TABLE tunnel_sessions;
ALTER TABLE devices DROP COLUMN public_url_port, DROP COLUMN public_url_enabled;
ALTER TABLE orgs DROP COLUMN tunnel_min_role;
DROP TABLE tunnel_server_key;
DROP SEQUENCE device_tunnel_host_seq;
DROP TABLE device_tunnels;
