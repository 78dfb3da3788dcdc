package broker

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/internal/testutil/promtest"
)

// shortToken signs a device token with the deployment's current key, as
// Issue would, but expiring at exp: devicetoken issues 15-minute tokens
// only.
func (e *env) shortToken(device uuid.UUID, exp time.Time) string {
	e.t.Helper()
	keys, err := db.New(e.pool).SigningKeyList(e.t.Context(), devicetoken.Purpose)
	if err != nil || len(keys) == 0 {
		e.t.Fatalf("signing keys: %v %v", keys, err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(keys[0].PrivateKey)
	if err != nil {
		e.t.Fatal(err)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.EdDSA,
		Key: jose.JSONWebKey{Key: priv.(ed25519.PrivateKey), KeyID: keys[0].Kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		e.t.Fatal(err)
	}
	now := time.Now()
	tok, err := jwt.Signed(signer).Claims(jwt.Claims{Issuer: testIssuer, Subject: device.String(), Audience: jwt.Audience{testIssuer},
		IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now), Expiry: jwt.NewNumericDate(exp), ID: uuid.NewString()}).
		Claims(map[string]any{"org": uuid.NewString(), "fleet": uuid.NewString()}).Serialize()
	if err != nil {
		e.t.Fatal(err)
	}
	return tok
}

// disconnected waits for the broker's DISCONNECT to c and returns its
// reason code.
func (c *client) disconnected(t *testing.T) byte {
	t.Helper()
	code, _ := c.disconnectedWith(t)
	return code
}

// disconnectedWith is disconnected with the reason string.
func (c *client) disconnectedWith(t *testing.T) (byte, string) {
	t.Helper()
	select {
	case code := <-c.serverDisconnect:
		reason := ""
		if r := c.disconnectReason.Load(); r != nil {
			reason = *r
		}
		return code, reason
	case <-time.After(testutil.Wait):
		t.Fatal("the broker did not disconnect the client")
		return 0, ""
	}
}

func reauthConnect(id uuid.UUID, token string) *paho.Connect {
	cp := deviceConnect(id, token)
	rm := uint16(64)
	cp.Properties = &paho.ConnectProperties{ReceiveMaximum: &rm, AuthMethod: devicetopic.ReauthMethod}
	return cp
}

// authHandler is what a paho client needs to connect with an
// authentication method; the broker never asks it anything.
type authHandler struct{}

func (authHandler) Authenticate(a *paho.Auth) *paho.Auth { return a }
func (authHandler) Authenticated()                       {}

func dialReauth(t *testing.T, e *env, id uuid.UUID, token string) (*client, *paho.Connack) {
	t.Helper()
	c, ca, err := dialWith(t, e.broker.Addr(), reauthConnect(id, token), authHandler{})
	if err != nil {
		t.Fatalf("connect with method %s: %v %v", devicetopic.ReauthMethod, ca, err)
	}
	return c, ca
}

// Deleting a device ends its open connection at once (DISCONNECT 0x87
// "device revoked", and its will goes out) and refuses its next CONNECT,
// though its token has minutes to live.
func TestDeletedDeviceIsDisconnected(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	testutil.Eventually(t, "the broker listening for revocations", func() error { return e.broker.Ready(t.Context()) })
	svc := e.connectService("revocation-watcher")
	if code := svc.subscribe(t, "flock/v1/devices/+/status"); code != 1 {
		t.Fatalf("SUBACK %#x", code)
	}
	dev, tok := e.device()
	other, otherTok := e.device()
	cp := deviceConnect(dev, tok)
	cp.WillMessage = &paho.WillMessage{Topic: topic(dev, "status"), QoS: 1, Payload: wrap(topic(dev, "status"), "offline")}
	c, _, err := e.dial(cp)
	if err != nil {
		t.Fatal(err)
	}
	bystander := e.connectDevice(other, otherTok)

	if _, err := e.pool.Exec(t.Context(), `DELETE FROM devices WHERE id = $1`, dev); err != nil {
		t.Fatal(err)
	}
	if code, reason := c.disconnectedWith(t); code != 0x87 || reason != "device revoked" {
		t.Fatalf("DISCONNECT %#x %q, want 0x87 device revoked", code, reason)
	}
	if p := svc.next(t); p.Topic != topic(dev, "status") || string(p.Payload) != "offline" {
		t.Fatalf("service received %q on %s, want the will", p.Payload, p.Topic)
	}
	if got := promtest.Sum(t, e.reg, "flock_mqtt_devices_disconnected_total", "reason", reasonRevoked); got != 1 {
		t.Errorf("disconnected{revoked} = %v, want 1", got)
	}
	if _, ca, err := e.dial(deviceConnect(dev, tok)); err == nil || ca == nil || ca.ReasonCode != 0x87 {
		t.Fatalf("reconnect of the deleted device: %v %v, want CONNACK 0x87", ca, err)
	}
	// Other devices stay.
	if code := bystander.publish(t, topic(other, "telemetry"), "still here"); code != 0 {
		t.Fatalf("the other device's publish: PUBACK %#x", code)
	}
}

// A deletion committed while the broker was not listening (its PostgreSQL
// connection lost) is caught when it listens again: it checks that every
// connected device still exists.
func TestRevocationMissedWhileNotListeningIsCaught(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	testutil.Eventually(t, "the broker listening for revocations", func() error { return e.broker.Ready(t.Context()) })
	dev, tok := e.device()
	c := e.connectDevice(dev, tok)

	// Delete without the trigger, as if no broker had been listening...
	tx, err := e.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck
	for _, q := range []string{`SET LOCAL session_replication_role = replica`, `DELETE FROM devices WHERE id = '` + dev.String() + `'`} {
		if _, err := tx.Exec(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	// ...then cut the broker's listening connection; it listens again.
	if _, err := e.pool.Exec(t.Context(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND query = 'LISTEN `+revocationChannel+`'`); err != nil {
		t.Fatal(err)
	}
	if code := c.disconnected(t); code != 0x87 {
		t.Fatalf("DISCONNECT %#x, want 0x87", code)
	}
	testutil.Eventually(t, "the broker listening again", func() error { return e.broker.Ready(t.Context()) })
}

// A connection ends when its token expires (DISCONNECT 0x87 "device token
// expired"), and the expired token no longer connects.
func TestConnectionEndsAtTokenExpiry(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	dev, _ := e.device()
	// JWT times are whole seconds.
	exp := time.Now().Add(2 * time.Second).Truncate(time.Second)
	tok := e.shortToken(dev, exp)
	c := e.connectDevice(dev, tok)
	if code, reason := c.disconnectedWith(t); code != 0x87 || reason != "device token expired" {
		t.Fatalf("DISCONNECT %#x %q, want 0x87 device token expired", code, reason)
	}
	if now := time.Now(); now.Before(exp) {
		t.Fatalf("disconnected %s before the token's expiry", exp.Sub(now))
	}
	if got := promtest.Sum(t, e.reg, "flock_mqtt_devices_disconnected_total", "reason", reasonTokenExpired); got != 1 {
		t.Errorf("disconnected{token_expired} = %v, want 1", got)
	}
	if _, ca, err := e.dial(deviceConnect(dev, tok)); err == nil || ca == nil || ca.ReasonCode != 0x86 {
		t.Fatalf("connect with the expired token: %v %v, want CONNACK 0x86", ca, err)
	}
}

// MQTT v5 re-authentication renews the token on the open connection: the
// connection then lives until the new token's expiry.
func TestReauthenticationRenewsTheToken(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	dev, long := e.device()
	shortExp := time.Now().Add(3 * time.Second)
	short := e.shortToken(dev, shortExp)
	c, ca := dialReauth(t, e, dev, short)
	if ca.Properties == nil || ca.Properties.AuthMethod != devicetopic.ReauthMethod {
		t.Fatalf("CONNACK authentication method = %+v, want %s echoed", ca.Properties, devicetopic.ReauthMethod)
	}
	longClaims, err := e.tokens.Verify(t.Context(), long)
	if err != nil {
		t.Fatal(err)
	}

	ar, err := c.Authenticate(t.Context(), &paho.Auth{ReasonCode: 0x19,
		Properties: &paho.AuthProperties{AuthMethod: devicetopic.ReauthMethod, AuthData: []byte(long)}})
	if err != nil || ar == nil || !ar.Success || ar.ReasonCode != 0 {
		t.Fatalf("AUTH: %+v %v, want success", ar, err)
	}
	if got, ok := e.broker.sessions.expiryOf(dev); !ok || !got.Equal(longClaims.Expiry) {
		t.Fatalf("connection ends at %s (%v), want the new token's expiry %s", got, ok, longClaims.Expiry)
	}
	// Past the first token's expiry the connection still works.
	testutil.Eventually(t, "the first token's expiry to pass", testutil.Until(func() bool { return time.Now().After(shortExp.Add(time.Second)) }))
	if code := c.publish(t, topic(dev, "telemetry"), "renewed"); code != 0 {
		t.Fatalf("publish after the first token's expiry: PUBACK %#x", code)
	}
	if !c.alive() {
		t.Fatal("connection ended")
	}
}

func TestReauthenticationRefused(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	for _, tt := range []struct {
		name     string
		method   bool // CONNECT names devicetopic.ReauthMethod
		auth     func(self, other uuid.UUID, otherTok string) *paho.Auth
		code     byte
		reasonIs string
	}{
		{"another device's token", true, func(_, _ uuid.UUID, otherTok string) *paho.Auth {
			return &paho.Auth{ReasonCode: 0x19, Properties: &paho.AuthProperties{AuthMethod: devicetopic.ReauthMethod, AuthData: []byte(otherTok)}}
		}, 0x87, "re-authentication failed"},
		{"garbage", true, func(uuid.UUID, uuid.UUID, string) *paho.Auth {
			return &paho.Auth{ReasonCode: 0x19, Properties: &paho.AuthProperties{AuthMethod: devicetopic.ReauthMethod, AuthData: []byte("x.y.z")}}
		}, 0x87, "re-authentication failed"},
		{"another method", true, func(uuid.UUID, uuid.UUID, string) *paho.Auth {
			return &paho.Auth{ReasonCode: 0x19, Properties: &paho.AuthProperties{AuthMethod: "SCRAM-SHA-1", AuthData: []byte("x")}}
		}, 0x8C, "re-authenticate with AUTH method"},
		{"CONNECT named no method", false, func(uuid.UUID, uuid.UUID, string) *paho.Auth {
			return &paho.Auth{ReasonCode: 0x19, Properties: &paho.AuthProperties{AuthMethod: devicetopic.ReauthMethod, AuthData: []byte("x")}}
		}, 0x8C, "re-authenticate with AUTH method"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dev, tok := e.device()
			other, otherTok := e.device()
			var c *client
			if tt.method {
				c, _ = dialReauth(t, e, dev, tok)
			} else {
				var err error
				if c, _, err = dialWith(t, e.broker.Addr(), deviceConnect(dev, tok), authHandler{}); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(t.Context(), testutil.Wait)
			defer cancel()
			ar, err := c.Authenticate(ctx, tt.auth(dev, other, otherTok))
			if err != nil || ar == nil || ar.Success || ar.ReasonCode != tt.code || !strings.Contains(ar.Properties.ReasonString, tt.reasonIs) {
				t.Fatalf("AUTH answered %+v %v, want DISCONNECT %#x %q", ar, err, tt.code, tt.reasonIs)
			}
		})
	}
}

// CONNECT may name only devicetopic.ReauthMethod, and only for a device.
func TestConnectWithAnotherAuthMethod(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	dev, tok := e.device()
	cp := deviceConnect(dev, tok)
	rm := uint16(64)
	cp.Properties = &paho.ConnectProperties{ReceiveMaximum: &rm, AuthMethod: "SCRAM-SHA-256"}
	if _, ca, err := dialWith(t, e.broker.Addr(), cp, authHandler{}); err == nil || ca == nil || ca.ReasonCode != 0x8C {
		t.Fatalf("CONNECT with method SCRAM-SHA-256: %v %v, want CONNACK 0x8C", ca, err)
	}
}

// What a device publishes is checked against its channel's schema before
// it is acknowledged: PUBACK 0x99 with the reason, and nothing delivered.
func TestInvalidPayloadIsRefused(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	svc := e.connectService("payload-watcher")
	for _, kind := range []string{"state", "telemetry", "logs", "status"} {
		if code := svc.subscribe(t, "flock/v1/devices/+/"+kind); code != 1 {
			t.Fatalf("SUBACK %#x", code)
		}
	}
	dev, tok := e.device()
	cp := deviceConnect(dev, tok)
	// Reason strings on a PUBACK need Request Problem Information (1, the
	// default of MQTT; paho sends 0 unless told).
	cp.Properties = &paho.ConnectProperties{RequestProblemInfo: true}
	c, _, err := e.dial(cp)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		kind, payload, reason string
	}{
		{"state", `not json`, "not JSON"},
		{"state", `{"os_version":"x"}`, "seq"},
		{"telemetry", `{"samples":[]}`, "samples"},
		{"logs", `{"entries":[{"service":"app","seq":1,"ts":"2026-12-01T00:00:00Z","stream":"stdin","line":"x"}]}`, "stream"},
		{"status", `{"state":"maybe","connection_seq":1}`, "state"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), testutil.Wait)
		pr, _ := c.Publish(ctx, &paho.Publish{Topic: topic(dev, tt.kind), QoS: 1, Payload: []byte(tt.payload)})
		cancel()
		if pr == nil || pr.ReasonCode != 0x99 || !strings.Contains(pr.Properties.ReasonString, tt.reason) {
			t.Errorf("%s %s: PUBACK %+v, want 0x99 naming %q", tt.kind, tt.payload, pr, tt.reason)
		}
	}
	// The next valid message is the first the service sees.
	if code := c.publish(t, topic(dev, "state"), `{"seq":7}`); code != 0 {
		t.Fatalf("valid state: PUBACK %#x", code)
	}
	if p := svc.next(t); string(p.Payload) != `{"seq":7}` {
		t.Fatalf("service received %s on %s first, want the valid state", p.Payload, p.Topic)
	}
	if got := promtest.Sum(t, e.reg, "flock_mqtt_publish_refused_total", "reason", "payload"); got != 5 {
		t.Errorf("publish_refused{payload} = %v, want 5", got)
	}
}

// A second connection under the same client id takes the session over;
// the first gets DISCONNECT 0x8E, as the AsyncAPI document says.
func TestSecondConnectionTakesOver(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	dev, tok := e.device()
	first := e.connectDevice(dev, tok)
	second := e.connectDevice(dev, tok)
	if code := first.disconnected(t); code != 0x8E {
		t.Fatalf("first connection: DISCONNECT %#x, want 0x8E", code)
	}
	if code := second.publish(t, topic(dev, "telemetry"), "second"); code != 0 {
		t.Fatalf("second connection: PUBACK %#x", code)
	}
	// The first connection's end does not end the second's session.
	if _, ok := e.broker.sessions.expiryOf(dev); !ok {
		t.Fatal("the device has no session after the takeover")
	}
}
