-- +goose Up
-- Shared conventions every later table uses: updated_at maintained by the
-- database, so no code path can forget it.
-- +goose StatementBegin
CREATE FUNCTION flock_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END;
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION flock_set_updated_at();
