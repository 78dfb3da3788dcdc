-- +goose Up
-- Builds (issue 15): an uploaded project turned by the builders into one
-- image per service and architecture, pushed to the platform registry, and
-- a release. The build's release is created with it, as a draft without
-- images; the build that ends fills them in and makes it final, or failed.
--
-- status: queued (no image started), running, succeeded, failed, cancelled.
-- services holds each service as the upload's compose file describes it
-- (what to build, or the image it names); indexes, once the build
-- succeeded, the image index pushed for each built service.
CREATE TABLE builds (
  id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  org_id              uuid NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
  fleet_id            uuid NOT NULL REFERENCES fleets (id) ON DELETE CASCADE,
  release_id          uuid NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
  status              text NOT NULL DEFAULT 'queued'
                        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
  version             text NOT NULL DEFAULT '',
  architectures       text[] NOT NULL,
  services            jsonb NOT NULL,
  indexes             jsonb NOT NULL DEFAULT '{}',
  -- the uploaded tar in the blob store, deleted when the build ends
  source_key          text NOT NULL,
  source_bytes        bigint NOT NULL,
  error               jsonb,
  -- the log: log_seq is the last line's number, log_bytes its size as
  -- text; lines live in build_log_lines while the build runs and in the
  -- blob store under log_key (log_stored_bytes compressed) after.
  log_seq             bigint NOT NULL DEFAULT 0,
  log_bytes           bigint NOT NULL DEFAULT 0,
  log_truncated       boolean NOT NULL DEFAULT false,
  log_key             text,
  log_stored_bytes    bigint,
  created_by          text NOT NULL DEFAULT '',
  created_at          timestamptz NOT NULL DEFAULT now(),
  started_at          timestamptz,
  finished_at         timestamptz,
  cancel_requested_at timestamptz,
  updated_at          timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT builds_release_key UNIQUE (release_id),
  CONSTRAINT builds_finished_check CHECK ((status IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);
CREATE INDEX builds_fleet_idx ON builds (fleet_id, created_at DESC, id DESC);
CREATE INDEX builds_open_idx ON builds (created_at) WHERE finished_at IS NULL;
CREATE TRIGGER builds_updated_at BEFORE UPDATE ON builds FOR EACH ROW EXECUTE FUNCTION flock_set_updated_at();

-- One service's image for one architecture: the unit a builder claims.
-- needs_run: building it for a foreign architecture would execute that
-- architecture's binaries (a RUN outside FROM --platform=$BUILDPLATFORM
-- stages), so only a builder running on it or emulating it may take it.
-- A builder holds a running image under a lease it renews; one whose
-- lease ran out is taken again (attempts counts the claims).
CREATE TABLE build_images (
  build_id      uuid NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
  service       text NOT NULL,
  architecture  text NOT NULL,
  needs_run     boolean NOT NULL,
  status        text NOT NULL DEFAULT 'queued'
                  CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
  image         text,
  digest        text,
  media_type    text,
  manifest_size bigint,
  holder        text,
  lease_until   timestamptz,
  attempts      integer NOT NULL DEFAULT 0,
  error         jsonb,
  queued_at     timestamptz NOT NULL DEFAULT now(),
  started_at    timestamptz,
  finished_at   timestamptz,
  PRIMARY KEY (build_id, service, architecture),
  CONSTRAINT build_images_lease_check CHECK ((status = 'running') = (lease_until IS NOT NULL))
);
CREATE INDEX build_images_open_idx ON build_images (queued_at) WHERE status IN ('queued', 'running');

CREATE TABLE build_log_lines (
  build_id     uuid NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
  seq          bigint NOT NULL,
  ts           timestamptz NOT NULL DEFAULT now(),
  service      text NOT NULL,
  architecture text NOT NULL DEFAULT '',
  line         text NOT NULL,
  PRIMARY KEY (build_id, seq)
);

-- Running builder replicas and what they can build: architectures it runs
-- on or emulates take any image; others only images without RUN for them.
-- A replica refreshes seen_at while it runs; one not seen for a while is
-- gone.
CREATE TABLE builders (
  holder        text PRIMARY KEY,
  architectures text[] NOT NULL,
  seen_at       timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE builders;
DROP TABLE build_log_lines;
DROP TABLE build_images;
DROP TABLE builds;
