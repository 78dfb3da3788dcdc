-- name: SigningKeyInsert :exec
INSERT INTO signing_keys (kid, purpose, algorithm, private_key) VALUES ($1, $2, $3, $4);

-- name: SigningKeyList :many
-- Published keys of a purpose, newest first; the first one signs.
SELECT * FROM signing_keys WHERE purpose = $1 ORDER BY created_at DESC, kid DESC;

-- name: SigningKeyDelete :execrows
DELETE FROM signing_keys WHERE purpose = $1 AND kid = $2;
