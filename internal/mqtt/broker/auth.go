package broker

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/devicetoken"
)

// Verifier is what the broker needs from device tokens (devicetoken.Service
// satisfies it).
type Verifier interface {
	Verify(ctx context.Context, token string) (*devicetoken.Claims, error)
}

// Identity is who an authenticated MQTT client is. The zero DeviceID goes with
// Service; a device has Service false.
type Identity struct {
	Service  bool
	DeviceID uuid.UUID
	OrgID    uuid.UUID
	FleetID  uuid.UUID
	// Expiry is when the device token presented expires: the embedded
	// broker ends the connection then, unless the device renews the token
	// on the connection (OnAuthPacket); an external broker is told it in the
	// auth hook's answer (EMQX's expire_at).
	Expiry time.Time
}

var (
	// ErrBadCredentials maps to CONNACK 0x86 (MQTT v5) / 0x04 (v3.1.1).
	ErrBadCredentials = errors.New("bad user name or password")
	// ErrNotAuthorized maps to CONNACK 0x87 (MQTT v5) / 0x05 (v3.1.1).
	ErrNotAuthorized = errors.New("not authorized")
)

// Reasons for flock_mqtt_auth_refused_total. They are a fixed set so the
// label cannot grow with what clients send.
const (
	reasonMalformedUsername = "malformed_username"
	reasonInvalidToken      = "invalid_token"
	reasonServicePassword   = "service_password"
	reasonDeviceMismatch    = "device_mismatch"
	reasonClientID          = "client_id"
	reasonWill              = "will"
	reasonUnavailable       = "unavailable"
	reasonAuthMethod        = "auth_method"
	// reasonRevoked (sessions.go): the device no longer exists.
)

var authRefusalReasons = []string{
	reasonMalformedUsername, reasonInvalidToken, reasonServicePassword,
	reasonDeviceMismatch, reasonClientID, reasonWill, reasonUnavailable,
	reasonAuthMethod, reasonRevoked,
}

// errBadAuthMethod maps to CONNACK 0x8C: CONNECT named an authentication
// method other than ReauthMethod.
var errBadAuthMethod = errors.New("bad authentication method")

// Authenticator decides who an MQTT client is when it connects. The embedded
// broker asks it for every CONNECT, and the API's HTTP hooks for an external
// broker (EMQX's HTTP authentication) ask the same one, so both brokers admit
// exactly the same clients. It is safe for concurrent use.
type Authenticator struct {
	serviceUsername       string
	servicePasswordDigest [sha256.Size]byte
	verifier              Verifier
	devices               *pgxpool.Pool
}

// NewAuthenticator admits the trusted service client (the ingester) with
// serviceUsername and servicePassword, and devices that still exist in
// devices (PostgreSQL) with device tokens that v verifies. An empty
// serviceUsername (with an empty password) admits no service client; the
// user name must not be a uuid, which names a device.
func NewAuthenticator(serviceUsername, servicePassword string, v Verifier, devices *pgxpool.Pool) (*Authenticator, error) {
	if v == nil {
		return nil, errors.New("mqtt authenticator: nil Verifier")
	}
	if devices == nil {
		return nil, errors.New("mqtt authenticator: nil device pool")
	}
	switch {
	case serviceUsername != "" && servicePassword == "":
		return nil, errors.New("mqtt authenticator: service user name is set but its password is empty")
	case serviceUsername == "" && servicePassword != "":
		return nil, errors.New("mqtt authenticator: service password is set but the user name is empty")
	}
	if _, err := uuid.Parse(serviceUsername); err == nil {
		return nil, fmt.Errorf("mqtt authenticator: service user name %q is a uuid, which names a device", serviceUsername)
	}
	return newAuthenticator(serviceUsername, sha256.Sum256([]byte(servicePassword)), v, devices), nil
}

func newAuthenticator(serviceUsername string, passwordDigest [sha256.Size]byte, v Verifier, devices *pgxpool.Pool) *Authenticator {
	return &Authenticator{serviceUsername: serviceUsername, servicePasswordDigest: passwordDigest, verifier: v, devices: devices}
}

// authenticator is the broker's Authenticator: New has checked the service
// credentials in its Config already.
func (b *Broker) authenticator() *Authenticator {
	return newAuthenticator(b.cfg.ServiceUsername, b.servicePasswordDigest, b.verifier, b.cfg.Devices)
}

// Authenticate decides whether a client may connect; see
// Authenticator.Authenticate.
func (b *Broker) Authenticate(ctx context.Context, clientID, username string, password []byte) (Identity, error) {
	return b.authenticator().Authenticate(ctx, clientID, username, password)
}

// authenticate is Authenticate plus the metric reason of a refusal.
func (b *Broker) authenticate(ctx context.Context, clientID, username string, password []byte) (Identity, string, error) {
	return b.authenticator().authenticate(ctx, clientID, username, password)
}

// Authenticate decides whether a client may connect. The service's user name
// and password give Identity{Service: true}; anyone else must be a device
// whose user name and client id are its uuid and whose password is a device
// token for that uuid. A refusal wraps ErrBadCredentials or ErrNotAuthorized;
// any other error means the token could not be checked (e.g. the database
// was unreachable while loading a new signing key).
func (a *Authenticator) Authenticate(ctx context.Context, clientID, username string, password []byte) (Identity, error) {
	id, _, err := a.authenticate(ctx, clientID, username, password)
	return id, err
}

// authenticate is Authenticate plus the metric reason of a refusal.
func (a *Authenticator) authenticate(ctx context.Context, clientID, username string, password []byte) (Identity, string, error) {
	if a.IsService(username) {
		if !a.servicePasswordMatches(password) {
			return Identity{}, reasonServicePassword, fmt.Errorf("%w: wrong service password", ErrBadCredentials)
		}
		// Devices own every uuid-shaped client id; a service session under
		// one could be taken over by, or take over, that device.
		if isCanonicalUUID(clientID) {
			return Identity{}, reasonClientID, fmt.Errorf("%w: service client id %s is a device uuid", ErrNotAuthorized, clientID)
		}
		return Identity{Service: true}, "", nil
	}

	// Only the canonical spelling is accepted, so that the uuid in the user
	// name, the client id and the topics is one string.
	if !isCanonicalUUID(username) {
		return Identity{}, reasonMalformedUsername, fmt.Errorf("%w: user name is not a device uuid", ErrBadCredentials)
	}
	device := uuid.MustParse(username)
	claims, err := a.verifier.Verify(ctx, string(password))
	if err != nil {
		if errors.Is(err, devicetoken.ErrInvalidToken) {
			return Identity{}, reasonInvalidToken, fmt.Errorf("%w: device %s: %w", ErrBadCredentials, device, err)
		}
		return Identity{}, reasonUnavailable, fmt.Errorf("verify token of device %s: %w", device, err)
	}
	// The HTTP API allows verified tokens 30 seconds of clock skew between
	// servers; a connection, though, ends exactly at exp (sessions.go), so
	// a token already past it would be cut off at once.
	if !claims.Expiry.After(time.Now()) {
		return Identity{}, reasonInvalidToken, fmt.Errorf("%w: device %s: token expired at %s", ErrBadCredentials, device, claims.Expiry.UTC().Format(time.RFC3339))
	}
	if claims.DeviceID != device {
		return Identity{}, reasonDeviceMismatch, fmt.Errorf("%w: token of device %s presented as device %s", ErrNotAuthorized, claims.DeviceID, device)
	}
	// Without this a device could connect under another device's client id
	// and so end that device's session.
	if clientID != username {
		return Identity{}, reasonClientID, fmt.Errorf("%w: client id %q is not the device uuid %s", ErrNotAuthorized, Truncate(clientID), device)
	}
	// Deleting a device stops its tokens at once, here as on the HTTP API.
	if _, err := db.New(a.devices).DeviceScope(ctx, device); errors.Is(err, pgx.ErrNoRows) {
		return Identity{}, reasonRevoked, fmt.Errorf("%w: device %s was deleted", ErrNotAuthorized, device)
	} else if err != nil {
		return Identity{}, reasonUnavailable, fmt.Errorf("load device %s: %w", device, err)
	}
	return Identity{
		DeviceID: claims.DeviceID,
		OrgID:    claims.OrgID,
		FleetID:  claims.FleetID,
		Expiry:   claims.Expiry,
	}, "", nil
}

// IsService reports whether username is the service client's.
func (a *Authenticator) IsService(username string) bool {
	return a.serviceUsername != "" && username == a.serviceUsername
}

// Identify names the client of a connection that Authenticate admitted, from
// its user name alone: the service user, or the device whose uuid the user
// name is. An external broker's ACL hook uses it, which is sound because the
// broker asks only about connections its authentication hook accepted. It
// reports false for a user name no connection could have been admitted with.
func (a *Authenticator) Identify(username string) (Identity, bool) {
	if a.IsService(username) {
		return Identity{Service: true}, true
	}
	if !isCanonicalUUID(username) {
		return Identity{}, false
	}
	return Identity{DeviceID: uuid.MustParse(username)}, true
}

// servicePasswordMatches compares digests so that neither the content nor the
// length of the secret shows in the comparison time.
func (a *Authenticator) servicePasswordMatches(password []byte) bool {
	got := sha256.Sum256(password)
	return subtle.ConstantTimeCompare(got[:], a.servicePasswordDigest[:]) == 1
}

// Topic layout, see asyncapi/flock.yaml.
const (
	topicPrefix = "flock/v1/devices/"
	sharePrefix = "$share/"
)

// deviceToCloud are the kinds a device publishes and the service consumes.
var deviceToCloud = map[string]bool{"state": true, "telemetry": true, "logs": true, "events": true, "status": true}

// cloudToDevice are the kinds the service publishes and a device consumes.
var cloudToDevice = map[string]bool{"target": true, "commands": true}

// CanPublish reports whether id may publish to topic: a device only to its own
// state, telemetry, logs, events and status; the service only to any device's
// target and commands.
func CanPublish(id Identity, topic string) bool {
	device, kind, ok := ParseDeviceTopic(topic)
	if !ok {
		return false
	}
	if id.Service {
		return cloudToDevice[kind]
	}
	return device == id.DeviceID && deviceToCloud[kind]
}

// CanSubscribe reports whether id may subscribe to filter: a device only to
// exactly its own target and commands; the service to
// flock/v1/devices/+/<kind>, plain or as $share/<group>/..., for the five
// kinds devices publish.
func CanSubscribe(id Identity, filter string) bool {
	if !id.Service {
		device, kind, ok := ParseDeviceTopic(filter)
		return ok && device == id.DeviceID && cloudToDevice[kind]
	}
	if rest, ok := strings.CutPrefix(filter, sharePrefix); ok {
		group, f, ok := strings.Cut(rest, "/")
		if !ok || group == "" || strings.ContainsAny(group, "+#") {
			return false
		}
		filter = f
	}
	rest, ok := strings.CutPrefix(filter, topicPrefix+"+/")
	return ok && deviceToCloud[rest]
}

// canReceive reports whether a message on topic may be delivered to id. Mochi
// asks this with the same callback as for subscription filters, so the hook
// accepts whatever CanSubscribe or canReceive accepts; for a device the two
// agree, and for the service it means it may also subscribe to one device's
// topic, which it can read anyway through the wildcard.
func canReceive(id Identity, topic string) bool {
	device, kind, ok := ParseDeviceTopic(topic)
	if !ok {
		return false
	}
	if id.Service {
		return deviceToCloud[kind]
	}
	return device == id.DeviceID && cloudToDevice[kind]
}

// canWill reports whether id may leave a will on topic: a device only on its
// own status, since the will is how the platform learns it went away
// uncleanly; the service wherever it may publish.
func canWill(id Identity, topic string) bool {
	if id.Service {
		return CanPublish(id, topic)
	}
	device, kind, ok := ParseDeviceTopic(topic)
	return ok && device == id.DeviceID && kind == "status"
}

// ParseDeviceTopic splits flock/v1/devices/<uuid>/<kind>, with the uuid in
// canonical form and a kind of one level. It does not allocate: it runs for
// every message the broker routes.
func ParseDeviceTopic(topic string) (uuid.UUID, string, bool) {
	rest, ok := strings.CutPrefix(topic, topicPrefix)
	if !ok || len(rest) < 38 || rest[36] != '/' || !isCanonicalUUID(rest[:36]) {
		return uuid.Nil, "", false
	}
	kind := rest[37:]
	if strings.IndexByte(kind, '/') >= 0 {
		return uuid.Nil, "", false
	}
	id, err := uuid.Parse(rest[:36])
	if err != nil {
		return uuid.Nil, "", false
	}
	return id, kind, true
}

// isCanonicalUUID reports whether s is a uuid as uuid.UUID.String writes it:
// lowercase hex, hyphenated, no braces or urn prefix.
func isCanonicalUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// Truncate bounds client-chosen strings before they reach logs and errors.
func Truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return s[:max] + "…"
}
