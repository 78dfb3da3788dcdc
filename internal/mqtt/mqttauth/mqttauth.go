// Package mqttauth decides who may connect to Flock's MQTT broker and what
// each client may publish and subscribe to. The embedded broker asks it for
// every CONNECT and every topic; the API's hooks ask it for an external
// broker (EMQX's HTTP authentication and authorization), so both admit
// exactly the same clients. It knows nothing of any broker.
package mqttauth

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
	"github.com/flock-io/flock-api/internal/devicetopic"
)

// Verifier checks device tokens (devicetoken.Service is one).
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

// Reasons of refusals, for logs and the broker's
// flock_mqtt_auth_refused_total. They are a fixed set so the label cannot
// grow with what clients send.
const (
	ReasonMalformedUsername = "malformed_username"
	ReasonInvalidToken      = "invalid_token"
	ReasonServicePassword   = "service_password"
	ReasonDeviceMismatch    = "device_mismatch"
	ReasonClientID          = "client_id"
	ReasonWill              = "will"
	ReasonUnavailable       = "unavailable"
	ReasonAuthMethod        = "auth_method"
	ReasonRevoked           = "revoked"
)

// Reasons are every reason a refusal may carry.
var Reasons = []string{
	ReasonMalformedUsername, ReasonInvalidToken, ReasonServicePassword,
	ReasonDeviceMismatch, ReasonClientID, ReasonWill, ReasonUnavailable,
	ReasonAuthMethod, ReasonRevoked,
}

// ErrBadAuthMethod maps to CONNACK 0x8C: CONNECT named an authentication
// method Flock does not know.
var ErrBadAuthMethod = errors.New("bad authentication method")

// Refusal is a refused connection: the error wraps ErrBadCredentials,
// ErrNotAuthorized or ErrBadAuthMethod, and Reason says why in one word.
type Refusal struct {
	Reason string
	Err    error
}

func (r *Refusal) Error() string { return r.Err.Error() }
func (r *Refusal) Unwrap() error { return r.Err }

// Refuse wraps err (which wraps one of the Err* refusals) with its reason.
func Refuse(reason string, err error) error { return &Refusal{Reason: reason, Err: err} }

// ReasonOf is the reason of a refusal, or ReasonUnavailable for an error
// that is none (the token could not be checked).
func ReasonOf(err error) string {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Reason
	}
	return ReasonUnavailable
}

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

// Authenticate decides whether a client may connect. The service's user name
// and password give Identity{Service: true}; anyone else must be a device
// whose user name and client id are its uuid and whose password is a device
// token for that uuid, for a device that still exists. A refusal is a
// *Refusal wrapping ErrBadCredentials or ErrNotAuthorized; any other error
// means the token could not be checked (e.g. the database was unreachable
// while loading a new signing key).
func (a *Authenticator) Authenticate(ctx context.Context, clientID, username string, password []byte) (Identity, error) {
	if a.IsService(username) {
		if !a.servicePasswordMatches(password) {
			return Identity{}, Refuse(ReasonServicePassword, fmt.Errorf("%w: wrong service password", ErrBadCredentials))
		}
		// Devices own every uuid-shaped client id; a service session under
		// one could be taken over by, or take over, that device.
		if devicetopic.IsCanonicalUUID(clientID) {
			return Identity{}, Refuse(ReasonClientID, fmt.Errorf("%w: service client id %s is a device uuid", ErrNotAuthorized, clientID))
		}
		return Identity{Service: true}, nil
	}

	// Only the canonical spelling is accepted, so that the uuid in the user
	// name, the client id and the topics is one string.
	if !devicetopic.IsCanonicalUUID(username) {
		return Identity{}, Refuse(ReasonMalformedUsername, fmt.Errorf("%w: user name is not a device uuid", ErrBadCredentials))
	}
	device := uuid.MustParse(username)
	claims, err := a.verifier.Verify(ctx, string(password))
	if err != nil {
		if errors.Is(err, devicetoken.ErrInvalidToken) {
			return Identity{}, Refuse(ReasonInvalidToken, fmt.Errorf("%w: device %s: %w", ErrBadCredentials, device, err))
		}
		return Identity{}, fmt.Errorf("verify token of device %s: %w", device, err)
	}
	// The HTTP API allows verified tokens 30 seconds of clock skew between
	// servers; a connection, though, ends exactly at exp (sessions.go), so
	// a token already past it would be cut off at once.
	if !claims.Expiry.After(time.Now()) {
		return Identity{}, Refuse(ReasonInvalidToken, fmt.Errorf("%w: device %s: token expired at %s", ErrBadCredentials, device, claims.Expiry.UTC().Format(time.RFC3339)))
	}
	if claims.DeviceID != device {
		return Identity{}, Refuse(ReasonDeviceMismatch, fmt.Errorf("%w: token of device %s presented as device %s", ErrNotAuthorized, claims.DeviceID, device))
	}
	// Without this a device could connect under another device's client id
	// and so end that device's session.
	if clientID != username {
		return Identity{}, Refuse(ReasonClientID, fmt.Errorf("%w: client id %q is not the device uuid %s", ErrNotAuthorized, devicetopic.Truncate(clientID), device))
	}
	// Deleting a device stops its tokens at once, here as on the HTTP API.
	if _, err := db.New(a.devices).DeviceScope(ctx, device); errors.Is(err, pgx.ErrNoRows) {
		return Identity{}, Refuse(ReasonRevoked, fmt.Errorf("%w: device %s was deleted", ErrNotAuthorized, device))
	} else if err != nil {
		return Identity{}, fmt.Errorf("load device %s: %w", device, err)
	}
	return Identity{
		DeviceID: claims.DeviceID,
		OrgID:    claims.OrgID,
		FleetID:  claims.FleetID,
		Expiry:   claims.Expiry,
	}, nil
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
	if !devicetopic.IsCanonicalUUID(username) {
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

// sharePrefix starts a shared subscription's filter ($share/<group>/...).
const sharePrefix = "$share/"

// CanPublish reports whether id may publish to topic: a device only to its own
// state, telemetry, logs, events and status; the service only to any device's
// target and commands.
func CanPublish(id Identity, topic string) bool {
	device, kind, ok := devicetopic.Parse(topic)
	if !ok {
		return false
	}
	if id.Service {
		return devicetopic.IsToDevice(kind)
	}
	return device == id.DeviceID && devicetopic.IsFromDevice(kind)
}

// CanSubscribe reports whether id may subscribe to filter: a device only to
// exactly its own target and commands; the service to
// flock/v1/devices/+/<kind>, plain or as $share/<group>/..., for the five
// kinds devices publish.
func CanSubscribe(id Identity, filter string) bool {
	if !id.Service {
		device, kind, ok := devicetopic.Parse(filter)
		return ok && device == id.DeviceID && devicetopic.IsToDevice(kind)
	}
	if rest, ok := strings.CutPrefix(filter, sharePrefix); ok {
		group, f, ok := strings.Cut(rest, "/")
		if !ok || group == "" || strings.ContainsAny(group, "+#") {
			return false
		}
		filter = f
	}
	rest, ok := strings.CutPrefix(filter, devicetopic.Prefix+"+/")
	return ok && devicetopic.IsFromDevice(rest)
}

// CanReceive reports whether a message on topic may be delivered to id. Mochi
// asks this with the same callback as for subscription filters, so the hook
// accepts whatever CanSubscribe or CanReceive accepts; for a device the two
// agree, and for the service it means it may also subscribe to one device's
// topic, which it can read anyway through the wildcard.
func CanReceive(id Identity, topic string) bool {
	device, kind, ok := devicetopic.Parse(topic)
	if !ok {
		return false
	}
	if id.Service {
		return devicetopic.IsFromDevice(kind)
	}
	return device == id.DeviceID && devicetopic.IsToDevice(kind)
}

// CanWill reports whether id may leave a will on topic: a device only on its
// own status, since the will is how the platform learns it went away
// uncleanly; the service wherever it may publish.
func CanWill(id Identity, topic string) bool {
	if id.Service {
		return CanPublish(id, topic)
	}
	device, kind, ok := devicetopic.Parse(topic)
	return ok && device == id.DeviceID && kind == "status"
}
