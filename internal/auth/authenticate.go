package auth

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth/oidcverify"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// Authenticator resolves the Authorization header to a Principal. A request
// without the header passes on anonymous (the Guard decides whether the
// operation allows that); a request with a bad credential is refused here,
// whatever it asks for.
type Authenticator struct {
	verifier *oidcverify.Verifier
	devices  *devicetoken.Service
	// deviceIssuer tells device tokens from user tokens.
	deviceIssuer string
	pool         *pgxpool.Pool
	log          *slog.Logger
	users        userCache
	tokens       tokenCache[oidcverify.Claims]
	devTok       tokenCache[devicetoken.Claims]
}

// NewAuthenticator verifies user tokens with v, device tokens (those whose
// issuer is deviceIssuer) with devices, and looks up users, API keys and
// devices in pool.
func NewAuthenticator(v *oidcverify.Verifier, devices *devicetoken.Service, deviceIssuer string, pool *pgxpool.Pool, log *slog.Logger) *Authenticator {
	return &Authenticator{verifier: v, devices: devices, deviceIssuer: deviceIssuer, pool: pool, log: log,
		users:  userCache{m: map[string]cachedUser{}},
		tokens: newTokenCache[oidcverify.Claims](), devTok: newTokenCache[devicetoken.Claims]()}
}

// Middleware stores the caller's Principal in the request context.
func (a *Authenticator) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		header := r.Header.Get("Authorization")
		if header == "" {
			if tok := websocketBearer(r); tok != "" {
				header = "Bearer " + tok
			}
		}
		if header == "" {
			next.ServeHTTP(w, r)
			return
		}
		p, err := a.Authenticate(r.Context(), header)
		if err != nil {
			problem.Write(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(WithPrincipal(r.Context(), p)))
	})
}

// WebSocketBearerPrefix marks the subprotocol that carries a bearer token
// in a WebSocket handshake: browsers cannot set Authorization on one, so
// they offer `flock.v1, bearer.<token>` (the server selects flock.v1 and
// never echoes the token).
const WebSocketBearerPrefix = "bearer."

// websocketBearer is the token of a WebSocket upgrade's bearer
// subprotocol, or "".
func websocketBearer(r *http.Request) string {
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		return ""
	}
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for _, p := range strings.Split(v, ",") {
			if tok, ok := strings.CutPrefix(strings.TrimSpace(p), WebSocketBearerPrefix); ok && tok != "" {
				return tok
			}
		}
	}
	return ""
}

// invalidToken is the 401 for a credential that was sent but is no good
// (RFC 6750 §3.1).
func invalidToken(detail string, cause error) *problem.Error {
	return &problem.Error{Status: http.StatusUnauthorized, Code: "invalid_token", Detail: detail, Err: cause,
		Header: http.Header{"WWW-Authenticate": {fmt.Sprintf(`Bearer error="invalid_token", error_description=%q`, detail)}}}
}

// Authenticate resolves an Authorization header value.
func (a *Authenticator) Authenticate(ctx context.Context, header string) (*Principal, error) {
	scheme, token, ok := strings.Cut(header, " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return nil, &problem.Error{Status: http.StatusUnauthorized, Code: "invalid_request",
			Detail: "the Authorization header must be `Bearer <token>`",
			Header: http.Header{"WWW-Authenticate": {`Bearer error="invalid_request"`}}}
	}
	if strings.HasPrefix(token, APIKeyPrefix) {
		return a.apiKey(ctx, token)
	}
	// Tokens seen in the last minute skip both the issuer peek and the
	// signature check.
	key := sha256Key(token)
	if c, ok := a.devTok.get(key); ok {
		return a.device(ctx, c)
	}
	claims, ok := a.tokens.get(key)
	if ok {
		return a.user(ctx, claims)
	}
	if a.devices != nil && issuerOf(token) == a.deviceIssuer {
		c, err := a.devices.Verify(ctx, token)
		if errors.Is(err, devicetoken.ErrInvalidToken) {
			return nil, invalidToken(err.Error(), err)
		}
		if err != nil {
			return nil, fmt.Errorf("verify device token: %w", err)
		}
		a.devTok.put(key, c, c.Expiry)
		return a.device(ctx, c)
	}
	if a.verifier == nil {
		return nil, invalidToken("this deployment accepts only API keys", nil)
	}
	claims, err := a.verifier.Verify(ctx, token)
	switch {
	case errors.Is(err, oidcverify.ErrInvalidToken):
		return nil, invalidToken(err.Error(), err)
	case errors.Is(err, oidcverify.ErrUnavailable):
		return nil, &problem.Error{Status: http.StatusServiceUnavailable, Code: "unavailable",
			Detail: "the identity provider cannot be reached to verify the token; retry shortly", Err: err,
			Header: http.Header{"Retry-After": {"5"}}}
	case err != nil:
		return nil, fmt.Errorf("verify token: %w", err)
	}
	a.tokens.put(key, claims, claims.Expiry)
	return a.user(ctx, claims)
}

// issuerOf reads a JWT's iss without verifying anything, only to pick the
// verifier; "" when it is not a JWT.
func issuerOf(token string) string {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var c struct {
		Iss string `json:"iss"`
	}
	if json.Unmarshal(b, &c) != nil {
		return ""
	}
	return c.Iss
}

// device checks that the device of verified claims still exists, so deleting
// a device stops its tokens at once.
func (a *Authenticator) device(ctx context.Context, c *devicetoken.Claims) (*Principal, error) {
	sc, err := db.New(a.pool).DeviceScope(ctx, c.DeviceID)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, invalidToken("the device was deleted", nil)
	}
	if err != nil {
		return nil, fmt.Errorf("load device %s: %w", c.DeviceID, err)
	}
	return &Principal{Kind: KindDevice, DeviceID: c.DeviceID, OrgID: sc.OrgID, FleetID: sc.FleetID}, nil
}

func (a *Authenticator) apiKey(ctx context.Context, secret string) (*Principal, error) {
	id, err := parseAPIKey(secret)
	if err != nil {
		return nil, invalidToken("malformed API key", err)
	}
	q := db.New(a.pool)
	k, err := q.ApiKeyByID(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && !secretMatches(secret, k.SecretHash)) {
		return nil, invalidToken("unknown or revoked API key", nil)
	}
	if err != nil {
		return nil, fmt.Errorf("load API key %s: %w", id, err)
	}
	if k.ExpiresAt != nil && !k.ExpiresAt.After(time.Now()) {
		return nil, invalidToken("API key expired at "+k.ExpiresAt.UTC().Format(time.RFC3339), nil)
	}
	if k.LastUsedAt == nil || time.Since(*k.LastUsedAt) > time.Minute {
		if err := q.ApiKeyTouch(ctx, k.ID); err != nil {
			a.log.WarnContext(ctx, "record API key use", "key_id", k.ID, "error", err.Error())
		}
	}
	return &Principal{Kind: KindAPIKey, KeyID: k.ID, KeyName: k.Name, KeyOrg: k.OrgID, KeyRole: k.Role}, nil
}

// user maps verified claims to a user row, creating it on the first request
// of a new subject, or claiming the row of someone added by email before
// they ever signed in.
func (a *Authenticator) user(ctx context.Context, c *oidcverify.Claims) (*Principal, error) {
	key := c.Issuer + "\x00" + c.Subject
	if u, ok := a.users.get(key); ok && u.email == c.Email && u.name == c.Name {
		return &Principal{Kind: KindUser, UserID: u.id, Email: u.email}, nil
	}
	q := db.New(a.pool)
	issuer, subject := &c.Issuer, &c.Subject
	u, err := q.UserByIdentity(ctx, db.UserByIdentityParams{Issuer: issuer, Subject: subject})
	switch {
	case err == nil:
		if u.Email != c.Email || u.Name != c.Name {
			if err := q.UserUpdateProfile(ctx, db.UserUpdateProfileParams{ID: u.ID, Email: c.Email, Name: c.Name}); err != nil {
				if postgres.IsUniqueViolation(err) {
					return nil, invalidToken("the token's email belongs to another account", err)
				}
				return nil, fmt.Errorf("update user %s: %w", u.ID, err)
			}
			u.Email, u.Name = c.Email, c.Name
		}
	case errors.Is(err, pgx.ErrNoRows):
		u, err = a.firstSignIn(ctx, q, c)
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("load user %s: %w", c.Subject, err)
	}
	a.users.put(key, cachedUser{id: u.ID, email: u.Email, name: u.Name})
	return &Principal{Kind: KindUser, UserID: u.ID, Email: u.Email}, nil
}

func (a *Authenticator) firstSignIn(ctx context.Context, q *db.Queries, c *oidcverify.Claims) (db.User, error) {
	issuer, subject := &c.Issuer, &c.Subject
	if c.EmailVerified {
		u, err := q.UserClaimByEmail(ctx, db.UserClaimByEmailParams{Issuer: issuer, Subject: subject, Name: c.Name, Email: c.Email})
		if err == nil {
			a.log.InfoContext(ctx, "invited user signed in", "user_id", u.ID, "email", u.Email)
			return u, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return db.User{}, fmt.Errorf("claim user %s: %w", c.Email, err)
		}
	}
	u, err := q.UserCreateFromIdentity(ctx, db.UserCreateFromIdentityParams{Issuer: issuer, Subject: subject, Email: c.Email, Name: c.Name})
	switch {
	case err == nil:
		a.log.InfoContext(ctx, "user created on first sign-in", "user_id", u.ID, "email", u.Email)
		return u, nil
	case errors.Is(err, pgx.ErrNoRows):
		// A concurrent first request created it.
		return q.UserByIdentity(ctx, db.UserByIdentityParams{Issuer: issuer, Subject: subject})
	case postgres.IsUniqueViolation(err):
		// ON CONFLICT covers the identity only: a concurrent first request
		// of the same subject that inserted first trips the email index
		// instead. Only when no row has this identity is the email someone
		// else's.
		u, lookErr := q.UserByIdentity(ctx, db.UserByIdentityParams{Issuer: issuer, Subject: subject})
		if lookErr == nil {
			return u, nil
		}
		if !errors.Is(lookErr, pgx.ErrNoRows) {
			return db.User{}, fmt.Errorf("load user %s after a unique violation: %w", c.Subject, lookErr)
		}
		return db.User{}, invalidToken("the token's email belongs to another account", err)
	default:
		return db.User{}, fmt.Errorf("create user %s: %w", c.Email, err)
	}
}

// userCache remembers which user an (issuer, subject) is. That mapping never
// changes, so only a changed email or name sends a request to the database;
// roles are never cached.
type userCache struct {
	mu sync.RWMutex
	m  map[string]cachedUser
}

type cachedUser struct {
	id          uuid.UUID
	email, name string
}

const userCacheSize = 10000

func (c *userCache) get(k string) (cachedUser, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	u, ok := c.m[k]
	return u, ok
}

func (c *userCache) put(k string, u cachedUser) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= userCacheSize {
		for old := range c.m { // random eviction is enough for a bound
			delete(c.m, old)
			break
		}
	}
	c.m[k] = u
}

// tokenCache remembers tokens that verified, for at most a minute and never
// past their expiry: a client sends the same token for many requests, and a
// signature check costs far more than the rest of a request. A key removed
// from the issuer stops being honoured within that minute at the latest;
// what must take effect at once (a deleted device, a removed member) is
// checked against the database on every request, not cached here.
type tokenCache[C any] struct {
	mu sync.RWMutex
	m  map[[32]byte]cachedToken[C]
}

type cachedToken[C any] struct {
	claims *C
	until  time.Time
}

const (
	tokenCacheSize = 10000
	tokenCacheTTL  = time.Minute
)

func newTokenCache[C any]() tokenCache[C] {
	return tokenCache[C]{m: map[[32]byte]cachedToken[C]{}}
}

func (c *tokenCache[C]) get(k [32]byte) (*C, bool) {
	c.mu.RLock()
	e, ok := c.m[k]
	c.mu.RUnlock()
	if !ok || !time.Now().Before(e.until) {
		return nil, false
	}
	return e.claims, true
}

func (c *tokenCache[C]) put(k [32]byte, claims *C, expiry time.Time) {
	until := time.Now().Add(tokenCacheTTL)
	if expiry.Before(until) {
		until = expiry
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= tokenCacheSize {
		now := time.Now()
		for old, e := range c.m { // drop the expired, or one at random when none are
			if !now.Before(e.until) {
				delete(c.m, old)
			}
		}
		for old := range c.m {
			if len(c.m) < tokenCacheSize {
				break
			}
			delete(c.m, old)
		}
	}
	c.m[k] = cachedToken[C]{claims: claims, until: until}
}

func sha256Key(token string) [32]byte { return sha256.Sum256([]byte(token)) }
