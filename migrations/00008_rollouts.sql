-- +goose Up
-- Rollouts: a final release taken through a fleet's devices group by group
-- (internal/rollout holds the rules, workers/scheduler drives them).

-- A saved device filter: every condition given must hold (tags all match,
-- the name starts with name_prefix, the id is one of device_ids). Rollouts
-- and the device list can target it.
CREATE TABLE device_groups (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id      uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
  name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
  tags        jsonb NOT NULL DEFAULT '{}',
  name_prefix text,
  device_ids  uuid[],
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT device_groups_name_key UNIQUE (org_id, name)
);
CREATE INDEX device_groups_org_idx ON device_groups (org_id, created_at, id);
CREATE TRIGGER device_groups_updated_at BEFORE UPDATE ON device_groups FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();

-- Whether a device of org d_org (id, name, tags) matches device group
-- grp: every condition the group gives holds. The one definition the
-- device list, rollouts and the scheduler use.
-- +goose StatementBegin
CREATE FUNCTION flock_in_device_group(grp uuid, d_org uuid, d_id uuid, d_name text, d_tags jsonb) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT EXISTS (
    SELECT 1 FROM device_groups g
    WHERE g.id = grp AND g.org_id = d_org AND d_tags @> g.tags
      AND (g.name_prefix IS NULL OR d_name LIKE replace(replace(replace(g.name_prefix, '\', '\\'), '%', '\%'), '_', '\_') || '%')
      AND (g.device_ids IS NULL OR d_id = ANY(g.device_ids)))
$$;
-- +goose StatementEnd

-- A fleet's maintenance window ({cron, duration_seconds, time_zone});
-- devices are newly targeted by a rollout only inside it.
ALTER TABLE fleets ADD COLUMN maintenance_window jsonb;

CREATE TABLE rollouts (
  id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id              uuid NOT NULL,
  fleet_id            uuid NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
  release_id          uuid NOT NULL REFERENCES releases (id),
  -- What the fleet ran at start, and its policy then: the fleet is held on
  -- from_release_id while the rollout runs, moves to release_id when it
  -- finishes (and tracks its latest release again if it did before).
  from_release_id     uuid REFERENCES releases (id),
  fleet_policy_before text,
  state               text NOT NULL DEFAULT 'ready' CHECK (state IN
                        ('ready', 'running', 'paused', 'waiting_for_approval', 'finished', 'aborted', 'rolled_back', 'canceled')),
  state_reason        text NOT NULL DEFAULT '',
  membership          text NOT NULL CHECK (membership IN ('snapshot', 'continuous')),
  selector            jsonb NOT NULL DEFAULT '{}',   -- {tags, device_group_id}
  device_group_id     uuid REFERENCES device_groups (id) ON DELETE SET NULL,
  spec                jsonb NOT NULL,                -- rate, ramp, window, settle, offline grace, rollback
  current_group       integer NOT NULL DEFAULT 0,
  group_ready_at      timestamptz,                   -- the next group may start at (soak)
  -- the rate limiter's bucket, and the ramp's current rate
  tokens              double precision NOT NULL DEFAULT 0,
  tokens_at           timestamptz,
  rate_per_minute     double precision NOT NULL DEFAULT 0,
  created_by          uuid,
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now(),
  started_at          timestamptz,
  ended_at            timestamptz
);
CREATE INDEX rollouts_fleet_idx ON rollouts (fleet_id, created_at DESC, id DESC);
CREATE INDEX rollouts_active_idx ON rollouts (state) WHERE state IN ('running', 'paused', 'waiting_for_approval');
-- One rollout at a time per fleet: ready counts, so two cannot be prepared
-- to race each other.
CREATE UNIQUE INDEX rollouts_one_per_fleet ON rollouts (fleet_id) WHERE state IN ('ready', 'running', 'paused', 'waiting_for_approval');
CREATE TRIGGER rollouts_updated_at BEFORE UPDATE ON rollouts FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();

CREATE TABLE rollout_groups (
  rollout_id    uuid NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
  idx           integer NOT NULL,
  name          text NOT NULL,
  spec          jsonb NOT NULL,   -- size, tag filter, thresholds, timeout, soak, approval
  share         double precision NOT NULL,  -- of the selection, for late joiners
  state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'complete')),
  -- A person resumed the rollout after this group tripped its error
  -- threshold: the threshold has had its say and does not trip again.
  threshold_acknowledged boolean NOT NULL DEFAULT false,
  started_at    timestamptz,
  ended_at      timestamptz,
  PRIMARY KEY (rollout_id, idx)
);

-- Each device's part in a rollout. state is one of internal/rollout's
-- device states; deadline bounds every non-terminal state.
CREATE TABLE rollout_devices (
  rollout_id        uuid NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
  device_id         uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
  group_idx         integer NOT NULL,
  state             text NOT NULL DEFAULT 'pending',
  reason            text NOT NULL DEFAULT '',
  -- the device's rollout assignment before this rollout targeted it, put
  -- back by a rollback
  previous_release_id uuid,
  targeted_at       timestamptz,
  state_at          timestamptz NOT NULL DEFAULT now(),
  deadline          timestamptz,
  healthy_since     timestamptz,
  -- the newest report applied (ReportedState.seq), so a redelivered or
  -- older one changes nothing
  last_seq          bigint NOT NULL DEFAULT -1,
  PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_device_idx ON rollout_devices (device_id);
CREATE INDEX rollout_devices_group_idx ON rollout_devices (rollout_id, group_idx, state);
CREATE INDEX rollout_devices_deadline_idx ON rollout_devices (rollout_id, deadline) WHERE deadline IS NOT NULL;
-- The scheduler's step finds settled devices by this and expired ones by
-- the deadline index, without reading the rollout's other rows.
CREATE INDEX rollout_devices_settling_idx ON rollout_devices (rollout_id, healthy_since) WHERE state = 'running';

-- A device's rollout assignment: the release a rollout put it on. It comes
-- after the device's own pin and before the fleet's (queries/nudge.sql
-- TargetChoices). NULL: the fleet decides.
ALTER TABLE devices ADD COLUMN rollout_release_id uuid REFERENCES releases (id);

-- A device that moves to another fleet, or gets a pin of its own (a pin
-- beats a rollout), leaves the rollouts that have not ended and its
-- assignment: thresholds count only the devices a rollout still steers,
-- and an unpin later returns the device to its fleet, not to an
-- unsupervised assignment.
-- +goose StatementBegin
CREATE FUNCTION flock_device_left_rollouts() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.fleet_id IS DISTINCT FROM OLD.fleet_id
     OR (NEW.pinned_release_id IS NOT NULL AND OLD.pinned_release_id IS NULL) THEN
    NEW.rollout_release_id := NULL;
    DELETE FROM rollout_devices rd USING rollouts r
    WHERE rd.device_id = OLD.id AND r.id = rd.rollout_id
      AND r.state IN ('ready', 'running', 'paused', 'waiting_for_approval');
  END IF;
  RETURN NEW;
END;
$$;
-- +goose StatementEnd
CREATE TRIGGER devices_left_rollouts BEFORE UPDATE OF fleet_id, pinned_release_id ON devices
  FOR EACH ROW EXECUTE FUNCTION flock_device_left_rollouts();

-- The outbox of flock.rollout.events.v1: an event is written in the
-- transaction of its transition and published from here by the scheduler,
-- so none is lost or invented by a crash between the two.
CREATE TABLE rollout_events (
  seq          bigserial PRIMARY KEY,
  id           uuid NOT NULL UNIQUE,
  rollout_id   uuid NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
  record       jsonb NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  published_at timestamptz
);
CREATE INDEX rollout_events_unpublished_idx ON rollout_events (seq) WHERE published_at IS NULL;
CREATE INDEX rollout_events_published_idx ON rollout_events (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX rollout_events_rollout_idx ON rollout_events (rollout_id, seq);

-- The scheduler records the transitions it makes on its own (a threshold
-- trips, a group succeeds, the rollout finishes).
ALTER TABLE audit_events DROP CONSTRAINT audit_events_actor_type_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_actor_type_check
  CHECK (actor_type IN ('user', 'api_key', 'provisioning_key', 'device', 'system'));

-- +goose Down
DELETE FROM audit_events WHERE actor_type = 'system';
ALTER TABLE audit_events DROP CONSTRAINT audit_events_actor_type_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_actor_type_check
  CHECK (actor_type IN ('user', 'api_key', 'provisioning_key', 'device'));
DROP TABLE rollout_events;
DROP TRIGGER devices_left_rollouts ON devices;
DROP FUNCTION flock_device_left_rollouts();
ALTER TABLE devices DROP COLUMN rollout_release_id;
DROP TABLE rollout_devices;
DROP TABLE rollout_groups;
DROP TABLE rollouts;
ALTER TABLE fleets DROP COLUMN maintenance_window;
DROP FUNCTION flock_in_device_group(uuid, uuid, uuid, text, jsonb);
DROP TABLE device_groups;
