-- name: UserByIdentity :one
SELECT * FROM users WHERE issuer = $1 AND subject = $2;

-- name: UserByEmail :one
SELECT * FROM users WHERE lower(email) = lower(@email::text);

-- name: UserByID :one
SELECT * FROM users WHERE id = $1;

-- name: UserCreateFromIdentity :one
-- The first sign-in of a new subject. Concurrent first requests race here;
-- the loser gets nothing and reads the winner's row.
INSERT INTO users (issuer, subject, email, name) VALUES ($1, $2, $3, $4)
ON CONFLICT (issuer, subject) DO NOTHING
RETURNING *;

-- name: UserClaimByEmail :one
-- Links a user added by email (no identity yet) to the identity that signed in with that email.
UPDATE users SET issuer = $1, subject = $2, name = CASE WHEN name = '' THEN @name::text ELSE name END
WHERE lower(email) = lower(@email::text) AND subject IS NULL
RETURNING *;

-- name: UserCreateInvited :one
-- A person added to an organisation before they ever signed in.
INSERT INTO users (email) VALUES ($1)
ON CONFLICT (lower(email)) DO UPDATE SET email = users.email
RETURNING *;

-- name: UserUpdateProfile :exec
UPDATE users SET email = $2, name = $3 WHERE id = $1 AND (email <> $2 OR name <> $3);
