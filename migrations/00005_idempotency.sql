-- +goose Up
-- Responses of writes sent with an Idempotency-Key, per caller, kept a day
-- so a client that lost a response can retry and get it without the write
-- running twice.
CREATE TABLE idempotency_keys (
  principal    text NOT NULL,
  key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
  operation    text NOT NULL,
  request_hash bytea NOT NULL,
  status       integer NOT NULL,
  body         bytea NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- +goose Down
DROP TABLE idempotency_keys;
