-- goose's own bookkeeping table, as goose v3 creates it. It is listed here
-- only so sqlc can type queries that read the schema version; goose, not a
-- migration, creates it.
CREATE TABLE goose_db_version (
  id serial PRIMARY KEY,
  version_id bigint NOT NULL,
  is_applied boolean NOT NULL,
  tstamp timestamp NOT NULL DEFAULT now()
);
