-- +goose Up
-- Roles are ordered: comparisons such as role >= 'admin' follow the enum order.
CREATE TYPE org_role AS ENUM ('viewer', 'developer', 'admin', 'owner');

-- People, identified by their OIDC issuer and subject. A user added to an
-- organisation by email before ever signing in has no subject yet; the first
-- sign-in with that verified email claims the row.
CREATE TABLE users (
  id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  issuer     text,
  subject    text,
  email      text NOT NULL,
  name       text NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT users_identity_key UNIQUE (issuer, subject),
  CONSTRAINT users_identity_pair CHECK ((issuer IS NULL) = (subject IS NULL))
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE TRIGGER users_updated_at BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();

CREATE TABLE orgs (
  id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER orgs_updated_at BEFORE UPDATE ON orgs FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();

CREATE TABLE memberships (
  org_id     uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
  user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  role       org_role NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user_idx ON memberships (user_id);
CREATE TRIGGER memberships_updated_at BEFORE UPDATE ON memberships FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();

-- Organisation API keys. Only a SHA-256 of the secret is kept: the secret
-- has 256 bits of entropy, so a slow hash would add nothing.
CREATE TABLE api_keys (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id       uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
  name         text NOT NULL,
  role         org_role NOT NULL,
  prefix       text NOT NULL,
  secret_hash  bytea NOT NULL,
  created_by   uuid REFERENCES users (id) ON DELETE SET NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  expires_at   timestamptz,
  last_used_at timestamptz
);
CREATE INDEX api_keys_org_idx ON api_keys (org_id, created_at DESC, id DESC);

-- The audit log. No foreign key to orgs: the record of an organisation's
-- deletion outlives the organisation.
CREATE TABLE audit_events (
  id          uuid PRIMARY KEY,
  org_id      uuid NOT NULL,
  occurred_at timestamptz NOT NULL,
  actor_type  text NOT NULL CHECK (actor_type IN ('user', 'api_key')),
  actor_id    uuid NOT NULL,
  actor_label text NOT NULL,
  operation   text NOT NULL,
  target_id   text,
  request_id  text NOT NULL,
  outcome     text NOT NULL CHECK (outcome IN ('success', 'failure')),
  status      integer NOT NULL
);
CREATE INDEX audit_events_org_time_idx ON audit_events (org_id, occurred_at DESC, id DESC);

-- Keys Flock signs tokens with. purpose 'dev-oidc' holds the dev-mode OIDC
-- provider's keys (never used outside dev mode); later purposes add device
-- tokens. A retired key stays published for verification until removed.
CREATE TABLE signing_keys (
  kid         text PRIMARY KEY,
  purpose     text NOT NULL,
  algorithm   text NOT NULL,
  private_key bytea NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  retired_at  timestamptz
);
CREATE INDEX signing_keys_purpose_idx ON signing_keys (purpose, created_at DESC);

-- +goose Down
DROP TABLE signing_keys;
DROP TABLE audit_events;
DROP TABLE api_keys;
DROP TABLE memberships;
DROP TABLE orgs;
DROP TABLE users;
DROP TYPE org_role;
