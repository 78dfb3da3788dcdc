-- +goose Up
-- Events for customers (issue 17): each organisation's CloudEvents (a
-- durable log that the WebSocket feed reads by sequence and replays read by
-- time), its endpoints (webhooks and Kafka clusters), and the outbox of
-- deliveries with their attempts (the delivery log).

-- One row per event, its id stable across redeliveries of the internal
-- record it came from, so a second copy is recognised and dropped.
CREATE TABLE org_events (
  seq        bigserial PRIMARY KEY,
  id         uuid NOT NULL UNIQUE,
  org_id     uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
  fleet_id   uuid,
  -- what orders the event's deliveries (a device or rollout id); events of
  -- one key reach each endpoint in order
  order_key  text NOT NULL DEFAULT '',
  type       text NOT NULL,
  source     text NOT NULL,
  subject    text NOT NULL DEFAULT '',
  time       timestamptz NOT NULL,
  data       jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX org_events_org_idx ON org_events (org_id, seq);
CREATE INDEX org_events_time_idx ON org_events (org_id, time);
CREATE INDEX org_events_created_idx ON org_events (created_at);

-- An endpoint: a webhook URL or a Kafka cluster. Secrets are sealed with
-- FLOCK_EVENTS_ENCRYPTION_KEY (AES-GCM, bound to the endpoint id):
-- secret signs webhooks; previous_secret signs too until
-- previous_expires_at (rotation); kafka_password is the SASL password.
CREATE TABLE event_endpoints (
  id                  uuid PRIMARY KEY,
  org_id              uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
  name                text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
  kind                text NOT NULL CHECK (kind IN ('webhook', 'kafka')),
  url                 text NOT NULL DEFAULT '',
  kafka               jsonb,
  kafka_password      bytea,
  types               text[] NOT NULL DEFAULT '{}',
  fleet_id            uuid REFERENCES fleets (id) ON DELETE CASCADE,
  secret              bytea,
  previous_secret     bytea,
  previous_expires_at timestamptz,
  enabled             boolean NOT NULL DEFAULT true,
  disabled_reason     text NOT NULL DEFAULT '',
  disabled_at         timestamptz,
  -- when the current run of failures began (null after a success)
  failing_since       timestamptz,
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX event_endpoints_org_idx ON event_endpoints (org_id, created_at, id);
CREATE TRIGGER event_endpoints_updated_at BEFORE UPDATE ON event_endpoints FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();

-- The outbox: one delivery per endpoint and event. A gateway replica
-- claims due deliveries under a lease; each attempt is made by one.
CREATE TABLE event_deliveries (
  id              uuid PRIMARY KEY,
  endpoint_id     uuid NOT NULL REFERENCES event_endpoints (id) ON DELETE CASCADE,
  event_seq       bigint NOT NULL REFERENCES org_events (seq) ON DELETE CASCADE,
  order_key       text NOT NULL DEFAULT '',
  status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  lease_until     timestamptz,
  leased_by       text,
  last_status     integer,
  last_error      text NOT NULL DEFAULT '',
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  UNIQUE (endpoint_id, event_seq)
);
CREATE INDEX event_deliveries_due_idx ON event_deliveries (endpoint_id, next_attempt_at, event_seq) WHERE status = 'pending';
CREATE INDEX event_deliveries_order_idx ON event_deliveries (endpoint_id, order_key, event_seq) WHERE status = 'pending';
CREATE INDEX event_deliveries_event_idx ON event_deliveries (event_seq);
CREATE INDEX event_deliveries_blocked_idx ON event_deliveries (created_at) WHERE status = 'pending' AND next_attempt_at = 'infinity';
CREATE INDEX event_deliveries_leased_idx ON event_deliveries (endpoint_id) WHERE status = 'pending' AND leased_by IS NOT NULL;

-- The delivery log: every attempt, newest first per endpoint.
CREATE TABLE event_delivery_attempts (
  id          uuid PRIMARY KEY,
  delivery_id uuid NOT NULL REFERENCES event_deliveries (id) ON DELETE CASCADE,
  endpoint_id uuid NOT NULL REFERENCES event_endpoints (id) ON DELETE CASCADE,
  at          timestamptz NOT NULL DEFAULT now(),
  status_code integer,
  duration_ms integer NOT NULL,
  response    text NOT NULL DEFAULT '',
  error       text NOT NULL DEFAULT '',
  succeeded   boolean NOT NULL
);
CREATE INDEX event_delivery_attempts_endpoint_idx ON event_delivery_attempts (endpoint_id, at DESC, id DESC);

-- Dev mode only: the key sealing endpoint secrets when
-- FLOCK_EVENTS_ENCRYPTION_KEY is unset, made once so every process of a
-- development deployment shares it. Production sets the key (a key kept
-- beside what it seals protects nothing).
CREATE TABLE event_dev_key (
  singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  key        bytea NOT NULL CHECK (length(key) = 32)
);

-- +goose Down
DROP TABLE event_dev_key;
DROP TABLE event_delivery_attempts;
DROP TABLE event_deliveries;
DROP TABLE event_endpoints;
DROP TABLE org_events;
