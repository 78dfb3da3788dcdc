package registryproxy

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/devicetoken"
)

// BuildUser is the user name builders log in with; the password is a build
// credential. It is reserved: an API key or access token presented under it
// is refused, since the password is then read as a build credential only.
const BuildUser = "flock-build"

// BuildCredentialType is the JWT typ of build credentials. Its own typ keeps
// a build credential from passing as a device or registry token, and either
// of those from passing as a build credential.
const BuildCredentialType = "flock-build+jwt"

// kindBuild is the subject kind of a build credential's holder. It lives
// here, not in auth, because the API never authenticates builds; the value
// is far from auth's iota so that the two never meet.
const kindBuild auth.Kind = 100

// SignBuildCredential returns the password a builder logs in to the
// registry with for build id: a JWT (typ BuildCredentialType) signed by
// tokens, subject "build:<id>", audience service (the registry service name
// the proxy is configured with, Config.Service), issuer realm (Config.Realm),
// valid for ttl. The build's rights are read when it is used, so ending the
// build revokes it before ttl runs out.
func SignBuildCredential(tokens *devicetoken.Service, realm, service string, build uuid.UUID, ttl time.Duration) (string, error) {
	if ttl <= 0 {
		return "", fmt.Errorf("registryproxy: build credential ttl %s is not positive", ttl)
	}
	now := time.Now()
	return tokens.Sign(BuildCredentialType, jwt.Claims{
		Issuer:    realm,
		Subject:   subject{kind: kindBuild, id: build}.String(),
		Audience:  jwt.Audience{service},
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
		Expiry:    jwt.NewNumericDate(now.Add(ttl)),
		ID:        rand.Text(),
	})
}

// verifyBuildCredential reads a build credential's subject. A refused
// credential gives an error wrapping devicetoken.ErrInvalidToken, one of an
// ended or deleted build errGone. The build is read now, not from the rights
// cache, so that a build's end refuses new registry tokens at once, as a
// device's deletion does.
func (p *Proxy) verifyBuildCredential(ctx context.Context, cred string) (subject, error) {
	var c jwt.Claims
	err := p.cfg.Tokens.VerifySigned(ctx, cred, BuildCredentialType,
		jwt.Expected{Issuer: p.cfg.Realm, AnyAudience: jwt.Audience{p.cfg.Service}}, &c)
	if err != nil {
		return subject{}, err
	}
	sub, err := parseSubject(c.Subject)
	if err != nil || sub.kind != kindBuild {
		return subject{}, fmt.Errorf("%w: subject %q is not a build", devicetoken.ErrInvalidToken, c.Subject)
	}
	if _, err := openBuild(ctx, db.New(p.cfg.Pool), sub.id); err != nil {
		return subject{}, err
	}
	return sub, nil
}

// buildRights: a build pulls its base images from any repository of its
// organisation and pushes only what it builds, into its own fleet's
// repositories; the rest of the registry is as invisible to it as to an
// outsider. An ended or deleted build's credentials are revoked.
func (p *Proxy) buildRights(ctx context.Context, q *db.Queries, id uuid.UUID, repo string) (rights, error) {
	b, err := openBuild(ctx, q, id)
	if err != nil {
		return rights{}, err
	}
	org, fleet, ok := splitRepo(repo)
	if !ok {
		return rights{}, nil
	}
	// By ids rather than slugs, so a repository is matched to the fleet
	// that holds its slug now.
	row, err := q.RegistryRepoAccess(ctx, db.RegistryRepoAccessParams{OrgSlug: org, FleetSlug: fleet, UserID: uuid.Nil})
	if errors.Is(err, pgx.ErrNoRows) {
		return rights{}, nil
	}
	if err != nil {
		return rights{}, fmt.Errorf("repository %s: %w", repo, err)
	}
	if row.OrgID != b.OrgID {
		return rights{}, nil
	}
	return rights{visible: true, pull: true, push: row.FleetID == b.FleetID}, nil
}

// openBuild is the build while it runs; errGone once it ended or was
// deleted.
func openBuild(ctx context.Context, q *db.Queries, id uuid.UUID) (db.Build, error) {
	b, err := q.BuildGet(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && b.FinishedAt != nil) {
		return db.Build{}, errGone
	}
	if err != nil {
		return db.Build{}, fmt.Errorf("load build %s: %w", id, err)
	}
	return b, nil
}
