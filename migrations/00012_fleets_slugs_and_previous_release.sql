-- +goose Up
-- Image repositories in the platform registry are named
-- <org slug>/<fleet slug>/<service>. Names are display text (any case,
-- spaces, not unique for organisations), so each organisation and fleet gets
-- a slug: given at creation or made from the name, unique (organisations
-- globally, fleets within their organisation) and never changed afterwards,
-- since image references and pushed repositories depend on it.

-- +goose StatementBegin
CREATE FUNCTION flock_slugify(name text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce(nullif(trim(both '-' from left(regexp_replace(lower(name), '[^a-z0-9]+', '-', 'g'), 50)), ''), 'x')
$$;
-- +goose StatementEnd

ALTER TABLE orgs ADD COLUMN slug text;
ALTER TABLE fleets ADD COLUMN slug text;

-- Existing rows: the name's slug, and for all but the oldest holder of a
-- slug, a suffix from the id.
UPDATE orgs o SET slug = s.slug FROM (
  SELECT id, CASE WHEN row_number() OVER (PARTITION BY flock_slugify(name) ORDER BY created_at, id) = 1
    THEN flock_slugify(name) ELSE flock_slugify(name) || '-' || left(replace(id::text, '-', ''), 8) END AS slug
  FROM orgs) s WHERE o.id = s.id;
UPDATE fleets f SET slug = s.slug FROM (
  SELECT id, CASE WHEN row_number() OVER (PARTITION BY org_id, flock_slugify(name) ORDER BY created_at, id) = 1
    THEN flock_slugify(name) ELSE flock_slugify(name) || '-' || left(replace(id::text, '-', ''), 8) END AS slug
  FROM fleets) s WHERE f.id = s.id;

-- A new row without a slug gets the name's, or with a suffix from its id
-- when that is taken. Two rows created at once with the same name may both
-- pick the bare slug; the unique constraint then refuses the second
-- (slug_taken), which a retry resolves.
-- +goose StatementBegin
CREATE FUNCTION flock_orgs_slug() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.slug IS NULL THEN
    NEW.slug := flock_slugify(NEW.name);
    IF EXISTS (SELECT 1 FROM orgs WHERE slug = NEW.slug) THEN
      NEW.slug := NEW.slug || '-' || left(replace(NEW.id::text, '-', ''), 8);
    END IF;
  END IF;
  RETURN NEW;
END $$;
CREATE FUNCTION flock_fleets_slug() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.slug IS NULL THEN
    NEW.slug := flock_slugify(NEW.name);
    IF EXISTS (SELECT 1 FROM fleets WHERE org_id = NEW.org_id AND slug = NEW.slug) THEN
      NEW.slug := NEW.slug || '-' || left(replace(NEW.id::text, '-', ''), 8);
    END IF;
  END IF;
  RETURN NEW;
END $$;
-- +goose StatementEnd
CREATE TRIGGER orgs_slug BEFORE INSERT ON orgs FOR EACH ROW EXECUTE FUNCTION flock_orgs_slug();
CREATE TRIGGER fleets_slug BEFORE INSERT ON fleets FOR EACH ROW EXECUTE FUNCTION flock_fleets_slug();

ALTER TABLE orgs ALTER COLUMN slug SET NOT NULL,
  ADD CONSTRAINT orgs_slug_key UNIQUE (slug),
  ADD CONSTRAINT orgs_slug_check CHECK (slug ~ '^[a-z0-9]+([_-][a-z0-9]+)*$' AND length(slug) <= 63);
ALTER TABLE fleets ALTER COLUMN slug SET NOT NULL,
  ADD CONSTRAINT fleets_slug_key UNIQUE (org_id, slug),
  ADD CONSTRAINT fleets_slug_check CHECK (slug ~ '^[a-z0-9]+([_-][a-z0-9]+)*$' AND length(slug) <= 63);

-- A device may pull the images of the release it ran before its current
-- one (a rollback target). The row keeps it: whenever the running release
-- changes, the old one becomes the previous.
ALTER TABLE devices ADD COLUMN previous_release_id uuid;
-- +goose StatementBegin
CREATE FUNCTION flock_devices_previous_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.running_release_id IS DISTINCT FROM OLD.running_release_id AND OLD.running_release_id IS NOT NULL THEN
    NEW.previous_release_id := OLD.running_release_id;
  END IF;
  RETURN NEW;
END $$;
-- +goose StatementEnd
CREATE TRIGGER devices_previous_release BEFORE UPDATE OF running_release_id ON devices
  FOR EACH ROW EXECUTE FUNCTION flock_devices_previous_release();

-- +goose Down
DROP TRIGGER devices_previous_release ON devices;
DROP FUNCTION flock_devices_previous_release();
ALTER TABLE devices DROP COLUMN previous_release_id;
DROP TRIGGER fleets_slug ON fleets;
DROP TRIGGER orgs_slug ON orgs;
DROP FUNCTION flock_fleets_slug();
DROP FUNCTION flock_orgs_slug();
ALTER TABLE fleets DROP COLUMN slug;
ALTER TABLE orgs DROP COLUMN slug;
DROP FUNCTION flock_slugify(text);
