package broker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/mqtt/mqttauth"
	"github.com/flock-io/flock-api/internal/postgres"
)

// A device's connection lives no longer than its token, and no longer than
// the device: sessions holds, for each connected device, the client and a
// timer that ends the connection when the token it presented (at CONNECT or
// in a re-authentication) expires, and revocations reach it from
// PostgreSQL.

var (
	// Reason codes of the DISCONNECTs that end a device's connection.
	codeTokenExpired = packets.Code{Code: packets.ErrNotAuthorized.Code, Reason: "device token expired"}
	codeRevoked      = packets.Code{Code: packets.ErrNotAuthorized.Code, Reason: "device revoked"}
	codeReauthFailed = packets.Code{Code: packets.ErrNotAuthorized.Code, Reason: "re-authentication failed: the token does not verify for this device"}
	codeBadMethod    = packets.Code{Code: packets.ErrBadAuthenticationMethod.Code, Reason: "re-authenticate with AUTH method " + devicetopic.ReauthMethod + ", named in CONNECT"}
)

// Reasons of flock_mqtt_devices_disconnected_total and refusals.
const (
	reasonTokenExpired = "token_expired"
	reasonRevoked      = mqttauth.ReasonRevoked
	reasonReauthFailed = "reauth_failed"
)

// revokedMemory is how long a revocation is remembered for connections
// still being set up when it arrived.
const revokedMemory = 2 * time.Minute

type session struct {
	cl     *mqtt.Client
	expiry time.Time
	timer  *time.Timer
}

type sessions struct {
	mu      sync.Mutex
	byID    map[uuid.UUID]*session
	revoked map[uuid.UUID]time.Time // device → when its revocation arrived
	end     func(cl *mqtt.Client, code packets.Code)
}

func newSessions(end func(*mqtt.Client, packets.Code)) *sessions {
	return &sessions{byID: map[uuid.UUID]*session{}, revoked: map[uuid.UUID]time.Time{}, end: end}
}

// add registers a device's accepted connection, replacing an older one of
// the same device (mochi has taken that session over). It reports false when
// the device was revoked meanwhile; the caller must then refuse it.
func (s *sessions) add(device uuid.UUID, cl *mqtt.Client, expiry time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.revoked[device]; ok {
		return false
	}
	if old := s.byID[device]; old != nil {
		old.timer.Stop()
	}
	ss := &session{cl: cl, expiry: expiry}
	ss.timer = time.AfterFunc(time.Until(expiry), func() { s.expire(device, cl) })
	s.byID[device] = ss
	return true
}

// renew moves the end of cl's connection to a new token's expiry.
func (s *sessions) renew(device uuid.UUID, cl *mqtt.Client, expiry time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.byID[device]
	if ss == nil || ss.cl != cl {
		return false
	}
	if _, ok := s.revoked[device]; ok {
		return false
	}
	ss.timer.Stop()
	ss.expiry = expiry
	ss.timer = time.AfterFunc(time.Until(expiry), func() { s.expire(device, cl) })
	return true
}

// expiryOf is when the device's connection ends, if it has one.
func (s *sessions) expiryOf(device uuid.UUID) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.byID[device]; ss != nil {
		return ss.expiry, true
	}
	return time.Time{}, false
}

// remove forgets cl when it was the device's current connection.
func (s *sessions) remove(device uuid.UUID, cl *mqtt.Client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss := s.byID[device]; ss != nil && ss.cl == cl {
		ss.timer.Stop()
		delete(s.byID, device)
	}
}

// expire ends cl's connection at its token's expiry. The entry goes too: a
// connection that failed between CONNECT and CONNACK gets no disconnect
// hook, and this is what forgets it.
func (s *sessions) expire(device uuid.UUID, cl *mqtt.Client) {
	s.mu.Lock()
	ss := s.byID[device]
	current := ss != nil && ss.cl == cl
	if current {
		delete(s.byID, device)
	}
	s.mu.Unlock()
	if current {
		s.end(cl, codeTokenExpired)
	}
}

// revoke ends the device's connection, if it has one here, and remembers
// the revocation for connections being set up.
func (s *sessions) revoke(device uuid.UUID) {
	s.mu.Lock()
	now := time.Now()
	s.revoked[device] = now
	for id, at := range s.revoked {
		if now.Sub(at) > revokedMemory {
			delete(s.revoked, id)
		}
	}
	ss := s.byID[device]
	s.mu.Unlock()
	if ss != nil {
		s.end(ss.cl, codeRevoked)
	}
}

// devices lists the connected devices.
func (s *sessions) devices() []uuid.UUID {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]uuid.UUID, 0, len(s.byID))
	for id := range s.byID {
		out = append(out, id)
	}
	return out
}

// revocationChannel is the PostgreSQL notification channel the devices
// table's trigger notifies (migrations/00007).
const revocationChannel = "flock_device_revoked"

// listenRevocations hears every device deletion committed in PostgreSQL and
// ends that device's connection. Whenever it (re)starts listening it checks
// every connected device still exists, so a deletion committed while it was
// not listening is not missed. It returns when ctx ends.
func (b *Broker) listenRevocations(ctx context.Context) {
	postgres.ListenWith(ctx, b.cfg.Devices, revocationChannel, postgres.Listening{
		Synced: func(ctx context.Context) error {
			if err := b.sweep(ctx, b.cfg.Devices); err != nil {
				return err
			}
			b.listening.Store(true)
			return nil
		},
		Notify: func(payload string) {
			id, err := uuid.Parse(payload)
			if err != nil {
				b.log.Warn("mqtt broker: revocation of an unreadable device id", "payload", devicetopic.Truncate(payload))
				return
			}
			b.sessions.revoke(id)
		},
		Lost: func() { b.listening.Store(false) },
	}, b.log.With("component", "mqtt broker"))
}

// sweep revokes every connected device that no longer exists.
func (b *Broker) sweep(ctx context.Context, pool *pgxpool.Pool) error {
	ids := b.sessions.devices()
	if len(ids) == 0 {
		return nil
	}
	owners, err := db.New(pool).DeviceOwners(ctx, ids)
	if err != nil {
		return fmt.Errorf("check connected devices exist: %w", err)
	}
	exist := make(map[uuid.UUID]bool, len(owners))
	for _, o := range owners {
		exist[o.ID] = true
	}
	for _, id := range ids {
		if !exist[id] {
			b.sessions.revoke(id)
		}
	}
	return nil
}
