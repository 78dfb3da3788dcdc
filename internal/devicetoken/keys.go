// Package devicetoken issues and verifies the short-lived JWTs devices
// present to the device API, and verifies the assertions devices sign with
// their own Ed25519 keys to obtain them (RFC 7523).
//
// Signing keys live in signing_keys so that every replica signs and verifies
// with the same keys. Each replica caches them in memory and reloads when a
// token names a kid it does not know, so verifying costs no database round
// trip and a rotation by one replica still reaches the others.
package devicetoken

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
)

// Purpose marks this package's rows in signing_keys.
const Purpose = "device-token"

const (
	// TokenTTL is how long an issued device token is valid.
	TokenTTL = 15 * time.Minute
	// MaxAssertionLifetime bounds how far ahead a device assertion may
	// expire, which bounds how long its jti must be remembered.
	MaxAssertionLifetime = 5 * time.Minute
)

const (
	algorithm = jose.EdDSA
	// clockSkew tolerates devices whose clocks drift; they often have no RTC.
	clockSkew = 30 * time.Second
	// published is how many keys verify: the signing key and the one before
	// it, so tokens signed just before a rotation live out their TTL.
	published          = 2
	defaultRotateEvery = 24 * time.Hour
	defaultCheckEvery  = time.Minute
	// defaultMissReloadEvery caps the database reads that tokens with made-up
	// kids can cause.
	defaultMissReloadEvery = time.Second
	// jtiRetention is how long past its exp a jti is kept. The assertion is
	// accepted until exp+clockSkew by this replica's clock; the extra minute
	// covers replicas whose clocks disagree.
	jtiRetention = clockSkew + time.Minute
)

// The SQL this package writes by hand; signing_keys goes through sqlc.
const (
	sqlLock              = `SELECT pg_advisory_xact_lock($1)`
	sqlTryLock           = `SELECT pg_try_advisory_xact_lock($1)`
	sqlRecordJTI         = `INSERT INTO device_assertion_jtis (device_id, jti, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`
	sqlDeleteExpiredJTIs = `DELETE FROM device_assertion_jtis WHERE expires_at < $1`
)

// lockKey serialises key creation and rotation across replicas.
var lockKey = func() int64 {
	h := fnv.New64a()
	h.Write([]byte("flock:signing_keys:" + Purpose))
	return int64(h.Sum64())
}()

// errNoKeys means the database holds no key of Purpose.
var errNoKeys = errors.New("no signing key")

// errOutraced means another replica's key, committed while this one waited
// for the lock, sorts newer than the key just inserted: the transaction's
// now() predates it.
var errOutraced = errors.New("another rotation committed first")

// Config configures a Service.
type Config struct {
	// Issuer is the public URL of the API (FLOCK_PUBLIC_URL): iss and aud of
	// device tokens.
	Issuer string
	// TokenEndpoint is the audience assertions must name; it defaults to
	// Issuer + "/device/v1/token".
	TokenEndpoint string
	// RotateEvery is the age at which Run replaces the signing key; it
	// defaults to 24h.
	RotateEvery time.Duration
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// Service issues and verifies device tokens and verifies device assertions.
// It is safe for concurrent use.
type Service struct {
	pool *pgxpool.Pool
	q    *db.Queries
	cfg  Config
	log  *slog.Logger

	keys atomic.Pointer[keySet]

	// reloadMu serialises reloads, so an older read never replaces a newer
	// one, and guards lastMissReload.
	reloadMu       sync.Mutex
	lastMissReload time.Time

	// Test hooks, fixed after New.
	now             func() time.Time
	missReloadEvery time.Duration
	checkEvery      time.Duration
}

type key struct {
	kid       string
	createdAt time.Time
	public    ed25519.PublicKey
	// signer and private are set on the current key only; private signs
	// tokens of other types (Sign).
	signer  jose.Signer
	private ed25519.PrivateKey
}

// keySet is immutable once stored, so readers need no lock.
type keySet struct {
	// keys holds the published keys, newest (the signing key) first.
	keys []*key
}

func (ks *keySet) current() *key { return ks.keys[0] }

func (ks *keySet) lookup(kid string) *key {
	for _, k := range ks.keys {
		if k.kid == kid {
			return k
		}
	}
	return nil
}

// New loads the keys of Purpose, creating the first one if there is none.
func New(ctx context.Context, pool *pgxpool.Pool, cfg Config) (*Service, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("devicetoken: issuer is required")
	}
	if cfg.TokenEndpoint == "" {
		cfg.TokenEndpoint = strings.TrimSuffix(cfg.Issuer, "/") + "/device/v1/token"
	}
	switch {
	case cfg.RotateEvery == 0:
		cfg.RotateEvery = defaultRotateEvery
	case cfg.RotateEvery < 0:
		return nil, fmt.Errorf("devicetoken: rotate interval %s is negative", cfg.RotateEvery)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &Service{
		pool:            pool,
		q:               db.New(pool),
		cfg:             cfg,
		log:             cfg.Log,
		now:             time.Now,
		missReloadEvery: defaultMissReloadEvery,
		checkEvery:      defaultCheckEvery,
	}
	err := s.reload(ctx)
	if err == nil {
		return s, nil
	}
	if !errors.Is(err, errNoKeys) {
		return nil, fmt.Errorf("devicetoken: %w", err)
	}
	if err := s.createFirst(ctx); err != nil {
		return nil, err
	}
	if err := s.reload(ctx); err != nil {
		return nil, fmt.Errorf("devicetoken: %w", err)
	}
	return s, nil
}

// createFirst creates a key unless another process did while this one waited
// for the lock; the random kids would not collide, so the lock, not a
// conflicting insert, is what keeps two processes from both creating one.
func (s *Service) createFirst(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, sqlLock, lockKey); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		q := db.New(tx)
		rows, err := q.SigningKeyList(ctx, Purpose)
		if err != nil {
			return fmt.Errorf("list keys: %w", err)
		}
		if len(rows) > 0 {
			return nil
		}
		kid, err := insertKey(ctx, q)
		if err != nil {
			return err
		}
		s.log.InfoContext(ctx, "created the first device token signing key", "kid", kid)
		return nil
	})
	if err != nil {
		return fmt.Errorf("devicetoken: create first key: %w", err)
	}
	return nil
}

// JWKS returns the public keys that verify device tokens: the signing key
// and the previous one.
func (s *Service) JWKS(_ context.Context) (jose.JSONWebKeySet, error) {
	ks := s.keys.Load()
	set := jose.JSONWebKeySet{Keys: make([]jose.JSONWebKey, 0, len(ks.keys))}
	for _, k := range ks.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{
			Key:       slices.Clone(k.public),
			KeyID:     k.kid,
			Algorithm: string(algorithm),
			Use:       "sig",
		})
	}
	return set, nil
}

// Rotate creates a key that signs from now on. The previous signing key stays
// published; older keys are deleted and stop verifying.
func (s *Service) Rotate(ctx context.Context) (string, error) {
	// A retry starts a transaction after the rotation that outraced it, so
	// its key sorts newest; more than one retry needs rotations back to back.
	const attempts = 3
	for range attempts {
		var kid string
		err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, sqlLock, lockKey); err != nil {
				return fmt.Errorf("lock: %w", err)
			}
			var err error
			kid, err = rotateIn(ctx, db.New(tx))
			return err
		})
		if errors.Is(err, errOutraced) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("devicetoken: rotate: %w", err)
		}
		s.log.InfoContext(ctx, "rotated the device token signing key", "kid", kid)
		if err := s.reload(ctx); err != nil {
			return "", fmt.Errorf("devicetoken: rotated to %s: %w", kid, err)
		}
		return kid, nil
	}
	return "", fmt.Errorf("devicetoken: rotate: %d attempts: %w", attempts, errOutraced)
}

// Run keeps the keys fresh until ctx is done: once at start and every
// minute it rotates the signing key when older than RotateEvery, deletes
// expired assertion jtis, and reloads the keys. Replicas may all run it; an
// advisory lock lets one at a time do the writes. It returns nil when ctx is
// done; failures are logged and retried at the next check.
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTicker(s.checkEvery)
	defer t.Stop()
	for {
		s.maintain(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (s *Service) maintain(ctx context.Context) {
	kid, err := s.maintainLocked(ctx)
	switch {
	case ctx.Err() != nil:
		return
	case errors.Is(err, errOutraced):
		// Another replica just rotated; nothing left to do.
	case err != nil:
		s.log.ErrorContext(ctx, "device token key maintenance failed", "error", err.Error())
	case kid != "":
		s.log.InfoContext(ctx, "rotated the device token signing key", "kid", kid, "rotate_every", s.cfg.RotateEvery.String())
	}
	// Reloaded even when another replica rotated, so this one stops signing
	// with the old key before a second rotation deletes it.
	if err := s.reload(ctx); err != nil && ctx.Err() == nil {
		s.log.ErrorContext(ctx, "device token key reload failed", "error", err.Error())
	}
}

// maintainLocked does the writes of one check if no other replica is doing
// them, and returns the kid it created, if any.
func (s *Service) maintainLocked(ctx context.Context) (string, error) {
	var kid string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var locked bool
		if err := tx.QueryRow(ctx, sqlTryLock, lockKey).Scan(&locked); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		if !locked {
			return nil
		}
		if _, err := tx.Exec(ctx, sqlDeleteExpiredJTIs, time.Now().Add(-jtiRetention)); err != nil {
			return fmt.Errorf("delete expired assertion jtis: %w", err)
		}
		q := db.New(tx)
		rows, err := q.SigningKeyList(ctx, Purpose)
		if err != nil {
			return fmt.Errorf("list keys: %w", err)
		}
		if len(rows) > 0 && time.Since(rows[0].CreatedAt) < s.cfg.RotateEvery {
			return nil
		}
		kid, err = rotateIn(ctx, q)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("devicetoken: maintain keys: %w", err)
	}
	return kid, nil
}

// rotateIn inserts a key and deletes those older than the previous one; q
// must be in a transaction holding lockKey.
func rotateIn(ctx context.Context, q *db.Queries) (string, error) {
	kid, err := insertKey(ctx, q)
	if err != nil {
		return "", err
	}
	rows, err := q.SigningKeyList(ctx, Purpose)
	if err != nil {
		return "", fmt.Errorf("list keys: %w", err)
	}
	if rows[0].Kid != kid {
		return "", errOutraced
	}
	for _, old := range rows[min(published, len(rows)):] {
		if _, err := q.SigningKeyDelete(ctx, db.SigningKeyDeleteParams{Purpose: Purpose, Kid: old.Kid}); err != nil {
			return "", fmt.Errorf("delete key %s: %w", old.Kid, err)
		}
	}
	return kid, nil
}

func insertKey(ctx context.Context, q *db.Queries) (string, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return "", fmt.Errorf("encode key: %w", err)
	}
	var suffix [8]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return "", fmt.Errorf("generate kid: %w", err)
	}
	kid := "dev-" + hex.EncodeToString(suffix[:])
	if err := q.SigningKeyInsert(ctx, db.SigningKeyInsertParams{
		Kid: kid, Purpose: Purpose, Algorithm: string(algorithm), PrivateKey: der,
	}); err != nil {
		return "", fmt.Errorf("store key %s: %w", kid, err)
	}
	return kid, nil
}

// reload replaces the cached keys with the published ones in the database.
func (s *Service) reload(ctx context.Context) error {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	return s.reloadLocked(ctx)
}

func (s *Service) reloadLocked(ctx context.Context) error {
	rows, err := s.q.SigningKeyList(ctx, Purpose)
	if err != nil {
		return fmt.Errorf("load keys: %w", err)
	}
	if len(rows) == 0 {
		return fmt.Errorf("load keys: %w", errNoKeys)
	}
	// A row beyond the previous key is left over from an interrupted
	// rotation; it is not published, and the next rotation deletes it.
	rows = rows[:min(published, len(rows))]
	ks := &keySet{keys: make([]*key, 0, len(rows))}
	for i, row := range rows {
		k, err := parseKey(row, i == 0)
		if err != nil {
			return err
		}
		ks.keys = append(ks.keys, k)
	}
	s.keys.Store(ks)
	return nil
}

func parseKey(row db.SigningKey, signs bool) (*key, error) {
	if row.Algorithm != string(algorithm) {
		return nil, fmt.Errorf("key %s: algorithm %q, want %s", row.Kid, row.Algorithm, algorithm)
	}
	parsed, err := x509.ParsePKCS8PrivateKey(row.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", row.Kid, err)
	}
	priv, ok := parsed.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key %s: %T is not an Ed25519 key", row.Kid, parsed)
	}
	k := &key{kid: row.Kid, createdAt: row.CreatedAt, public: priv.Public().(ed25519.PublicKey)}
	if signs {
		k.private = priv
		k.signer, err = jose.NewSigner(
			jose.SigningKey{Algorithm: algorithm, Key: jose.JSONWebKey{Key: priv, KeyID: row.Kid}},
			(&jose.SignerOptions{}).WithType(TokenType),
		)
		if err != nil {
			return nil, fmt.Errorf("signer for key %s: %w", row.Kid, err)
		}
	}
	return k, nil
}

// verificationKey returns the published key kid, reloading the keys once if
// it is unknown, in case another replica rotated.
func (s *Service) verificationKey(ctx context.Context, kid string) (*key, error) {
	if k := s.keys.Load().lookup(kid); k != nil {
		return k, nil
	}
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	// Another caller may have reloaded while this one waited.
	if k := s.keys.Load().lookup(kid); k != nil {
		return k, nil
	}
	if time.Since(s.lastMissReload) < s.missReloadEvery {
		return nil, nil
	}
	s.lastMissReload = time.Now()
	if err := s.reloadLocked(ctx); err != nil {
		return nil, err
	}
	return s.keys.Load().lookup(kid), nil
}
