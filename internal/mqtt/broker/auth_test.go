package broker

import (
	"errors"
	"log/slog"
	"testing"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/mqtt/mqttauth"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

// TestAuthenticate checks the decision function alone, as an external
// broker's auth hook would call it.
func TestAuthenticate(t *testing.T) {
	t.Parallel()
	e := start(t, nil)
	devA, tokA := e.device()
	devB, _ := e.device()
	devGone, tokGone := e.device()
	if _, err := e.pool.Exec(t.Context(), `DELETE FROM devices WHERE id = $1`, devGone); err != nil {
		t.Fatal(err)
	}

	// A verifier that cannot reach its database to load an unknown key: the
	// answer is neither refusal.
	// Two of them: after a failed reload a verifier waits before trying the
	// database again, so the broker's and the standalone Authenticator's
	// calls below must not share one.
	brokenPool, brokenPool2 := pgtest.Pool(t), pgtest.Pool(t)
	broken, broken2 := newTokens(t, brokenPool, testIssuer), newTokens(t, brokenPool2, testIssuer)
	otherPool := newTokens(t, pgtest.Pool(t), testIssuer)
	tokUnknownKey, _, err := otherPool.Issue(t.Context(), devA, uuid.New(), uuid.New())
	if err != nil {
		t.Fatal(err)
	}
	brokenPool.Close()
	brokenPool2.Close()
	unavailable, err := New(Config{Listen: "127.0.0.1:0", Log: slog.New(slog.DiscardHandler), Devices: e.pool}, broken)
	if err != nil {
		t.Fatal(err)
	}
	run(t, unavailable)

	tests := []struct {
		name               string
		b                  *Broker
		clientID, username string
		password           string
		want               error // nil, mqttauth.ErrBadCredentials, mqttauth.ErrNotAuthorized, or errOther
		service            bool
	}{
		{"device", e.broker, devA.String(), devA.String(), tokA, nil, false},
		{"service", e.broker, "ingester-7", serviceUser, servicePassword, nil, true},
		{"service, wrong password", e.broker, "ingester-7", serviceUser, "x", mqttauth.ErrBadCredentials, false},
		{"service, password a prefix of the real one", e.broker, "ingester-7", serviceUser, servicePassword[:3], mqttauth.ErrBadCredentials, false},
		{"service, device uuid as client id", e.broker, devA.String(), serviceUser, servicePassword, mqttauth.ErrNotAuthorized, false},
		{"garbage token", e.broker, devA.String(), devA.String(), "x.y.z", mqttauth.ErrBadCredentials, false},
		{"token of another device", e.broker, devB.String(), devB.String(), tokA, mqttauth.ErrNotAuthorized, false},
		{"client id not the uuid", e.broker, "mine", devA.String(), tokA, mqttauth.ErrNotAuthorized, false},
		{"user name not a uuid", e.broker, "x", "x", tokA, mqttauth.ErrBadCredentials, false},
		{"empty user name", e.broker, "", "", tokA, mqttauth.ErrBadCredentials, false},
		{"verifier unavailable", unavailable, devA.String(), devA.String(), tokUnknownKey, errOther, false},
		{"deleted device, token still valid", e.broker, devGone.String(), devGone.String(), tokGone, mqttauth.ErrNotAuthorized, false},
	}
	// The standalone Authenticator an external broker's hooks use, built
	// from the same credentials and verifier, decides the same.
	standalone := map[*Broker]*mqttauth.Authenticator{}
	for b, v := range map[*Broker]mqttauth.Verifier{e.broker: e.tokens, unavailable: broken2} {
		user, pass := b.cfg.ServiceUsername, b.cfg.ServicePassword
		a, err := mqttauth.NewAuthenticator(user, pass, v, e.pool)
		if err != nil {
			t.Fatal(err)
		}
		standalone[b] = a
	}
	for _, tt := range tests {
		for _, via := range []string{"broker", "authenticator"} {
			t.Run(tt.name+"/"+via, func(t *testing.T) {
				authenticate := tt.b.Authenticate
				if via == "authenticator" {
					authenticate = standalone[tt.b].Authenticate
				}
				id, err := authenticate(t.Context(), tt.clientID, tt.username, []byte(tt.password))
				switch {
				case tt.want == nil && err != nil:
					t.Fatalf("Authenticate: %v", err)
				case tt.want == errOther:
					if err == nil || errors.Is(err, mqttauth.ErrBadCredentials) || errors.Is(err, mqttauth.ErrNotAuthorized) {
						t.Fatalf("Authenticate = %v, want an error that is no refusal", err)
					}
				case tt.want != nil && !errors.Is(err, tt.want):
					t.Fatalf("Authenticate = %v, want %v", err, tt.want)
				}
				if err != nil {
					t.Logf("refused: %v", err)
					return
				}
				if id.Service != tt.service {
					t.Errorf("Service = %v, want %v", id.Service, tt.service)
				}
				if !tt.service && (id.DeviceID != devA || id.OrgID == uuid.Nil || id.FleetID == uuid.Nil || id.Expiry.IsZero()) {
					t.Errorf("identity %+v lacks the token's claims", id)
				}
			})
		}
	}
}

var errOther = errors.New("some other error")
