package mqttauth

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

const (
	testIssuer      = "http://flock.test"
	serviceUser     = "ingester"
	servicePassword = "ingester-secret"
)

func topic(id uuid.UUID, kind string) string { return devicetopic.Topic(id, kind) }

func newTokens(t testing.TB, pool *pgxpool.Pool, issuer string) *devicetoken.Service {
	t.Helper()
	s, err := devicetoken.New(context.Background(), pool, devicetoken.Config{
		Issuer: issuer, TokenEndpoint: issuer + "/device/v1/token", Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("devicetoken.New: %v", err)
	}
	return s
}

func TestCanPublish(t *testing.T) {
	a, b := uuid.New(), uuid.New()
	dev := Identity{DeviceID: a}
	svc := Identity{Service: true}
	tests := []struct {
		name  string
		id    Identity
		topic string
		want  bool
	}{
		{"device state", dev, topic(a, "state"), true},
		{"device telemetry", dev, topic(a, "telemetry"), true},
		{"device logs", dev, topic(a, "logs"), true},
		{"device events", dev, topic(a, "events"), true},
		{"device status", dev, topic(a, "status"), true},
		{"device own target", dev, topic(a, "target"), false},
		{"device own commands", dev, topic(a, "commands"), false},
		{"device other's state", dev, topic(b, "state"), false},
		{"device unknown kind", dev, topic(a, "config"), false},
		{"device empty kind", dev, topic(a, ""), false},
		{"device deeper level", dev, topic(a, "state/x"), false},
		{"device wildcard kind", dev, topic(a, "+"), false},
		{"device uppercase uuid", dev, "flock/v1/devices/" + strings.ToUpper(a.String()) + "/state", false},
		{"device braced uuid", dev, "flock/v1/devices/{" + a.String() + "}/state", false},
		{"device other version", dev, "flock/v2/devices/" + a.String() + "/state", false},
		{"device empty topic", dev, "", false},
		{"device $SYS", dev, "$SYS/broker/uptime", false},
		{"service target", svc, topic(b, "target"), true},
		{"service commands", svc, topic(a, "commands"), true},
		{"service state", svc, topic(a, "state"), false},
		{"service status", svc, topic(a, "status"), false},
		{"service wildcard device", svc, "flock/v1/devices/+/target", false},
		{"service not a uuid", svc, "flock/v1/devices/all/target", false},
		{"nil device is still a device", Identity{}, topic(a, "state"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CanPublish(tt.id, tt.topic); got != tt.want {
				t.Errorf("CanPublish(%+v, %q) = %v, want %v", tt.id, tt.topic, got, tt.want)
			}
		})
	}
}

func TestCanSubscribe(t *testing.T) {
	a, b := uuid.New(), uuid.New()
	dev := Identity{DeviceID: a}
	svc := Identity{Service: true}
	tests := []struct {
		name   string
		id     Identity
		filter string
		want   bool
	}{
		{"device own target", dev, topic(a, "target"), true},
		{"device own commands", dev, topic(a, "commands"), true},
		{"device own state", dev, topic(a, "state"), false},
		{"device other's target", dev, topic(b, "target"), false},
		{"device all targets", dev, "flock/v1/devices/+/target", false},
		{"device own subtree", dev, "flock/v1/devices/" + a.String() + "/#", false},
		{"device own kinds", dev, "flock/v1/devices/" + a.String() + "/+", false},
		{"device shared own target", dev, "$share/g/" + topic(a, "target"), false},
		{"device everything", dev, "#", false},
		{"service shared state", svc, "$share/ingest/flock/v1/devices/+/state", true},
		{"service shared telemetry", svc, "$share/ingest/flock/v1/devices/+/telemetry", true},
		{"service shared logs", svc, "$share/ingest/flock/v1/devices/+/logs", true},
		{"service shared events", svc, "$share/ingest/flock/v1/devices/+/events", true},
		{"service shared status", svc, "$share/ingest/flock/v1/devices/+/status", true},
		{"service plain state", svc, "flock/v1/devices/+/state", true},
		{"service shared target", svc, "$share/ingest/flock/v1/devices/+/target", false},
		{"service plain commands", svc, "flock/v1/devices/+/commands", false},
		{"service any kind", svc, "flock/v1/devices/+/+", false},
		{"service subtree", svc, "flock/v1/devices/#", false},
		{"service empty group", svc, "$share//flock/v1/devices/+/state", false},
		{"service wildcard group", svc, "$share/+/flock/v1/devices/+/state", false},
		{"service share without filter", svc, "$share/ingest", false},
		{"service uppercase share", svc, "$SHARE/ingest/flock/v1/devices/+/state", false},
		{"service everything", svc, "#", false},
		{"service $SYS", svc, "$SYS/#", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CanSubscribe(tt.id, tt.filter); got != tt.want {
				t.Errorf("CanSubscribe(%+v, %q) = %v, want %v", tt.id, tt.filter, got, tt.want)
			}
		})
	}
}

func TestCanReceiveAndWill(t *testing.T) {
	a, b := uuid.New(), uuid.New()
	dev := Identity{DeviceID: a}
	svc := Identity{Service: true}
	receive := []struct {
		id    Identity
		topic string
		want  bool
	}{
		{dev, topic(a, "target"), true},
		{dev, topic(a, "commands"), true},
		{dev, topic(b, "target"), false},
		{dev, topic(a, "state"), false},
		{svc, topic(b, "state"), true},
		{svc, topic(b, "status"), true},
		{svc, topic(b, "target"), false},
		{svc, "$SYS/broker/uptime", false},
	}
	for _, tt := range receive {
		if got := CanReceive(tt.id, tt.topic); got != tt.want {
			t.Errorf("CanReceive(%+v, %q) = %v, want %v", tt.id, tt.topic, got, tt.want)
		}
	}
	will := []struct {
		id    Identity
		topic string
		want  bool
	}{
		{dev, topic(a, "status"), true},
		{dev, topic(a, "state"), false},
		{dev, topic(b, "status"), false},
		{svc, topic(a, "commands"), true},
		{svc, topic(a, "status"), false},
	}
	for _, tt := range will {
		if got := CanWill(tt.id, tt.topic); got != tt.want {
			t.Errorf("CanWill(%+v, %q) = %v, want %v", tt.id, tt.topic, got, tt.want)
		}
	}
}

func TestCanReceiveDoesNotAllocate(t *testing.T) {
	tp := topic(uuid.New(), "telemetry")
	svc := Identity{Service: true}
	if n := testing.AllocsPerRun(100, func() { CanReceive(svc, tp) }); n != 0 {
		t.Errorf("CanReceive allocates %v times per message", n)
	}
}

func TestNewAuthenticator(t *testing.T) {
	pool := pgtest.Pool(t)
	v := newTokens(t, pool, testIssuer)
	for _, tt := range []struct {
		name, user, password string
		v                    Verifier
		pool                 *pgxpool.Pool
		ok                   bool
	}{
		{"service and devices", serviceUser, servicePassword, v, pool, true},
		{"devices only", "", "", v, pool, true},
		{"no verifier", serviceUser, servicePassword, nil, pool, false},
		{"no device pool", serviceUser, servicePassword, v, nil, false},
		{"user without password", serviceUser, "", v, pool, false},
		{"password without user", "", servicePassword, v, pool, false},
		{"user name is a uuid", uuid.NewString(), servicePassword, v, pool, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, err := NewAuthenticator(tt.user, tt.password, tt.v, tt.pool)
			if (err == nil) != tt.ok {
				t.Fatalf("NewAuthenticator = %v, %v; want ok %v", a, err, tt.ok)
			}
		})
	}
	// Without a service user, its name is nobody's: not even the empty one.
	a, err := NewAuthenticator("", "", v, pool)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Authenticate(t.Context(), "ingester-1", "", nil); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("empty user name without a service user = %v, want ErrBadCredentials", err)
	}
}

func TestIdentify(t *testing.T) {
	pool := pgtest.Pool(t)
	a, err := NewAuthenticator(serviceUser, servicePassword, newTokens(t, pool, testIssuer), pool)
	if err != nil {
		t.Fatal(err)
	}
	dev := uuid.New()
	for _, tt := range []struct {
		username string
		want     Identity
		ok       bool
	}{
		{serviceUser, Identity{Service: true}, true},
		{dev.String(), Identity{DeviceID: dev}, true},
		{strings.ToUpper(dev.String()), Identity{}, false},
		{"{" + dev.String() + "}", Identity{}, false},
		{"someone", Identity{}, false},
		{"", Identity{}, false},
	} {
		if got, ok := a.Identify(tt.username); got != tt.want || ok != tt.ok {
			t.Errorf("Identify(%q) = %+v, %v; want %+v, %v", tt.username, got, ok, tt.want, tt.ok)
		}
	}
}
