// Package handlers assembles the resource handlers into the one value that
// implements the generated strict server interface.
package handlers

import (
	"github.com/google/uuid"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers/apikeys"
	"github.com/flock-io/flock-api/handlers/auditlog"
	"github.com/flock-io/flock-api/handlers/builds"
	"github.com/flock-io/flock-api/handlers/commands"
	"github.com/flock-io/flock-api/handlers/deltas"
	"github.com/flock-io/flock-api/handlers/deviceapi"
	"github.com/flock-io/flock-api/handlers/devicedata"
	"github.com/flock-io/flock-api/handlers/devicegroups"
	"github.com/flock-io/flock-api/handlers/devices"
	"github.com/flock-io/flock-api/handlers/eventendpoints"
	"github.com/flock-io/flock-api/handlers/fleets"
	"github.com/flock-io/flock-api/handlers/identity"
	"github.com/flock-io/flock-api/handlers/members"
	"github.com/flock-io/flock-api/handlers/mqtthooks"
	"github.com/flock-io/flock-api/handlers/orgs"
	"github.com/flock-io/flock-api/handlers/provisioning"
	"github.com/flock-io/flock-api/handlers/releases"
	"github.com/flock-io/flock-api/handlers/rollouts"
	"github.com/flock-io/flock-api/handlers/streams"
	"github.com/flock-io/flock-api/handlers/summary"
	"github.com/flock-io/flock-api/handlers/system"
	"github.com/flock-io/flock-api/handlers/tunnels"
	"github.com/flock-io/flock-api/handlers/variables"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/blob"
	"github.com/flock-io/flock-api/internal/buildinfo"
	buildstore "github.com/flock-io/flock-api/internal/builds"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/kv"
	"github.com/flock-io/flock-api/internal/mqtt/mqttauth"
	"github.com/flock-io/flock-api/internal/registry"
	livestreams "github.com/flock-io/flock-api/internal/streams"
	"github.com/flock-io/flock-api/internal/telemetry"
	"github.com/flock-io/flock-api/workers/nudger"
)

// Server implements every operation of the OpenAPI document; each embedded
// handler brings the operations of one resource.
type Server struct {
	*system.System
	*identity.Identity
	*orgs.Orgs
	*members.Members
	*apikeys.APIKeys
	*auditlog.AuditLog
	*fleets.Fleets
	*provisioning.Provisioning
	*releases.Releases
	*devices.Devices
	*devicegroups.DeviceGroups
	*rollouts.Rollouts
	*variables.Variables
	*deviceapi.DeviceAPI
	*mqtthooks.MQTTHooks
	*streams.Streams
	*devicedata.DeviceData
	*summary.Summary
	*commands.Commands
	*deltas.Deltas
	*builds.Builds
	*tunnels.Tunnels
	*eventendpoints.EventEndpoints
}

var _ api.StrictServerInterface = (*Server)(nil)

// Deps is what the handlers need from the rest of the process.
type Deps struct {
	Pool *pgxpool.Pool
	// Targets are the mounted targets that /v1/version reports.
	Targets []string
	// Tokens issues device tokens for the token endpoint; TokenEndpoint is
	// the URL devices put in their assertions' aud.
	Tokens        *devicetoken.Service
	TokenEndpoint string
	// Audit records what does not pass through the guard's audited writes
	// (device registrations).
	Audit *audit.Recorder
	// MQTTURL is the broker devices are told to connect to at registration;
	// empty when this deployment runs none.
	// It is a function because the embedded broker's port may be known
	// only once it has bound.
	MQTTURL func() string
	// KV is the live-state store the ingester writes; device reads show its
	// reported state when it is newer than PostgreSQL's. Nil: PostgreSQL
	// only.
	KV kv.Store
	// Telemetry is where device connectivity histories are read from.
	Telemetry telemetry.Store
	// MQTTAuth answers an external MQTT broker's auth and ACL hooks with the
	// embedded broker's rules; nil denies every client.
	MQTTAuth *mqttauth.Authenticator
	// MQTTHookToken, when not empty, is the bearer token those hooks
	// require; the hooks must then be mounted behind Server.MQTTHooks.Gate.
	MQTTHookToken string
	// MQTTHooksOpen lets the hooks answer without a token (dev mode);
	// without either they refuse every request.
	MQTTHooksOpen bool
	// Bus is the Kafka bus: HTTP reports of devices' state go on
	// flock.device.state.v1 like MQTT ones, so the scheduler and the streams
	// see both. Nil publishes nothing (tests of handlers that need no bus).
	Bus *bus.Bus
	// Nudge hears of committed changes to devices' targets (pins, moves,
	// releases, variables) and tells the devices; nil sends no nudges.
	Nudge nudger.Notifier
	// Commands sends new device commands after commit
	// (workers/commands); nil leaves them for the next reconnect.
	Commands commands.Sender
	// StreamHub feeds the live streams; nil answers them with 503.
	StreamHub *livestreams.Hub
	// Registry is the platform registry releases are checked against;
	// RegistryHost its public host[:port] (FLOCK_REGISTRY_HOST).
	Registry     *registry.Registry
	RegistryHost string
	// Blobs is the S3 store deltas are served from.
	Blobs *blob.Store
	// Builds configures the builds API (upload limit, spool directory);
	// its stores are filled in from the fields above.
	Builds builds.Builds
	// EventEndpoints configures the event subscriptions (the secrets' box,
	// the URL policy, the deliverer of test sends); its pool is filled in.
	EventEndpoints *eventendpoints.EventEndpoints
	// DevicePublicURL is a device's public URL (FLOCK_DEVICE_URL_DOMAIN);
	// nil when there is none.
	DevicePublicURL func(uuid.UUID) string
	// Tunnels configures remote access (the tunnel dialer, the overlay);
	// its stores are filled in from the fields above.
	Tunnels *tunnels.Tunnels
	// StreamRecheck is how often an open stream asks whether its caller
	// may still read it (FLOCK_STREAM_RECHECK); zero means 30s.
	StreamRecheck time.Duration
}

// New wires every handler to its dependencies.
func New(d Deps) *Server {
	pool := d.Pool
	return &Server{
		System:       &system.System{DB: db.New(pool), Build: buildinfo.Get(), Targets: d.Targets},
		Identity:     &identity.Identity{Pool: pool},
		Orgs:         &orgs.Orgs{Pool: pool},
		Members:      &members.Members{Pool: pool},
		APIKeys:      &apikeys.APIKeys{Pool: pool},
		AuditLog:     &auditlog.AuditLog{Pool: pool},
		Fleets:       &fleets.Fleets{Pool: pool, Nudge: d.Nudge},
		Provisioning: &provisioning.Provisioning{Pool: pool},
		Releases:     &releases.Releases{Pool: pool, Nudge: d.Nudge, Registry: d.Registry, RegistryHost: d.RegistryHost},
		Devices:      &devices.Devices{Pool: pool, Nudge: d.Nudge, KV: d.KV, Telemetry: d.Telemetry, PublicURL: d.DevicePublicURL, Audit: d.Audit},
		DeviceGroups: &devicegroups.DeviceGroups{Pool: pool},
		Rollouts:     &rollouts.Rollouts{Pool: pool, Nudge: d.Nudge},
		Variables:    &variables.Variables{Pool: pool, Nudge: d.Nudge},
		DeviceAPI:    &deviceapi.DeviceAPI{Pool: pool, Tokens: d.Tokens, TokenEndpoint: d.TokenEndpoint, Audit: d.Audit, MQTTURL: d.MQTTURL, Bus: d.Bus},
		MQTTHooks:    &mqtthooks.MQTTHooks{Auth: d.MQTTAuth, Token: d.MQTTHookToken, Open: d.MQTTHooksOpen},
		Streams:      &streams.Streams{Pool: pool, Hub: d.StreamHub, Telemetry: d.Telemetry, Recheck: d.StreamRecheck},
		DeviceData:   &devicedata.DeviceData{Telemetry: d.Telemetry},
		Summary:      &summary.Summary{Pool: pool},
		Commands:     &commands.Commands{Pool: pool, Send: d.Commands, KV: d.KV},
		Deltas:       newDeltas(d),
		Builds:       newBuilds(d),
		Tunnels:      newTunnels(d),
		EventEndpoints: func() *eventendpoints.EventEndpoints {
			h := d.EventEndpoints
			if h == nil {
				h = &eventendpoints.EventEndpoints{}
			}
			h.Pool = d.Pool
			return h
		}(),
	}
}

// newTunnels wires the remote-access handler; without a configuration it
// answers 503 tunnels_unavailable.
func newTunnels(d Deps) *tunnels.Tunnels {
	h := d.Tunnels
	if h == nil {
		h = &tunnels.Tunnels{}
	}
	h.Pool, h.Audit = d.Pool, d.Audit
	return h
}

// newBuilds wires the builds handler to the process's stores.
func newBuilds(d Deps) *builds.Builds {
	h := d.Builds
	h.Pool, h.Blobs, h.Registry, h.Bus, h.RegistryHost = d.Pool, d.Blobs, d.Registry, d.Bus, d.RegistryHost
	if h.Finisher == nil && d.Blobs != nil && d.Registry != nil {
		h.Finisher = &buildstore.Finisher{Pool: d.Pool, Blobs: d.Blobs, Registry: d.Registry, RegistryHost: d.RegistryHost}
		if d.Nudge != nil {
			h.Finisher.FleetFinal = d.Nudge.FleetChanged
		}
	}
	return &h
}

// newDeltas wires the delta handler, leaving out a bus or store this
// process lacks (an interface holding a nil pointer is not nil).
func newDeltas(d Deps) *deltas.Deltas {
	h := &deltas.Deltas{Pool: d.Pool}
	if d.Bus != nil {
		h.Bus = d.Bus
	}
	if d.Blobs != nil {
		h.Blobs = d.Blobs
	}
	return h
}
