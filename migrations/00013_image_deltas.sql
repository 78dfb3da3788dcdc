-- +goose Up
-- Image deltas (issue 14): the delta from one image a device runs to the
-- image its target release names, for one architecture, computed once by
-- the delta worker and kept in the blob store. from_digest and to_digest
-- are as the device knows them (release digests, maybe image indexes);
-- from_repo and to_repo are their repositories in the platform registry.
--
-- state: pending (asked for; a request is on flock.delta.requests.v1),
-- computing (a worker holds the lease; it renews lease_until while it
-- works, and a row whose lease ran out may be taken again), ready (blob_key
-- holds size bytes), not_smaller (the delta was not enough smaller than
-- layers_size: nothing stored, devices pull the layers), failed (error
-- says why: devices pull the layers).
CREATE TABLE image_deltas (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id       uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
  from_repo    text NOT NULL,
  from_digest  text NOT NULL,
  to_repo      text NOT NULL,
  to_digest    text NOT NULL,
  architecture text NOT NULL,
  state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'computing', 'ready', 'not_smaller', 'failed')),
  lease_holder text,
  lease_until  timestamptz,
  attempts     integer NOT NULL DEFAULT 0,
  blob_key     text,
  -- the delta's bytes (ready; for not_smaller, what it would have been)
  size         bigint,
  -- what pulling the target's layers that the source lacks downloads
  layers_size  bigint,
  error        text NOT NULL DEFAULT '',
  -- when a request for the row was last published
  requested_at timestamptz NOT NULL DEFAULT now(),
  computed_at  timestamptz,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT image_deltas_pair_key UNIQUE (org_id, from_digest, to_digest, architecture),
  CONSTRAINT image_deltas_ready_check CHECK ((state = 'ready') = (blob_key IS NOT NULL)),
  CONSTRAINT image_deltas_lease_check CHECK ((state = 'computing') = (lease_until IS NOT NULL))
);
CREATE TRIGGER image_deltas_updated_at BEFORE UPDATE ON image_deltas FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();

-- +goose Down
DROP TABLE image_deltas;
