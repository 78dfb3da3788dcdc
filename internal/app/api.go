package app

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/flock-io/flock-api/gen"
	"github.com/flock-io/flock-api/handlers"
	"github.com/flock-io/flock-api/handlers/builds"
	"github.com/flock-io/flock-api/handlers/streams"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/auth/oidcverify"
	"github.com/flock-io/flock-api/internal/devoidc"
	"github.com/flock-io/flock-api/internal/http/docs"
	"github.com/flock-io/flock-api/internal/http/idempotency"
	"github.com/flock-io/flock-api/internal/http/reqinfo"
	"github.com/flock-io/flock-api/internal/http/restapi"
	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/internal/mqtt/mqttauth"
	livestreams "github.com/flock-io/flock-api/internal/streams"
)

// initAPI mounts the REST API, the device API, the MQTT hooks and the
// documents on the HTTP server. Its background work is the nudger and
// janitor modules it depends on.
func (a *App) initAPI(ctx context.Context) (*modules.Service, error) {
	spec, err := restapi.LoadSpec(ctx, gen.OpenAPIYAML)
	if err != nil {
		return nil, err
	}
	guard, err := auth.NewGuard(spec, handlers.Policy, a.pool, a.audit, a.log)
	if err != nil {
		return nil, err
	}
	// The hooks an external broker calls admit the ingester with the
	// credentials it is configured with; without a password (embedded
	// broker) they admit no service client.
	hookUser := ""
	if a.cfg.MQTTPassword != "" {
		hookUser = a.cfg.MQTTUsername
	}
	mqttAuth, err := mqttauth.NewAuthenticator(hookUser, a.cfg.MQTTPassword, a.tokens, a.pool)
	if err != nil {
		return nil, fmt.Errorf("FLOCK_MQTT_USERNAME: %w", err)
	}
	// The stream hub is the api target's: it reads the topics while the
	// target runs, and stopping it ends every open stream, so the HTTP
	// server (stopped after the api) can drain.
	spool := filepath.Join(a.cfg.DataDir, "uploads")
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return nil, fmt.Errorf("FLOCK_DATA_DIR: %w", err)
	}
	hub := livestreams.New(a.bus, livestreams.Options{Log: a.log, Registerer: a.metrics.Registry})
	tun, err := a.tunnelsHandler()
	if err != nil {
		return nil, err
	}
	server := handlers.New(handlers.Deps{Pool: a.pool, Targets: a.targets, Tokens: a.tokens,
		TokenEndpoint: TokenEndpoint(a.cfg.PublicURL), Audit: a.audit, MQTTURL: a.mqttPublicURL.Load,
		KV: a.kv, Telemetry: a.telemetry, MQTTAuth: mqttAuth, MQTTHookToken: a.cfg.MQTTHookToken,
		MQTTHooksOpen: a.cfg.Dev, Nudge: a.nudger, Bus: a.bus, StreamRecheck: a.cfg.StreamRecheck, Commands: a.commands, StreamHub: hub,
		Registry: a.registry, RegistryHost: a.cfg.RegistryPublicHost(), Blobs: a.blobs,
		Builds:  builds.Builds{MaxUpload: int64(a.cfg.BuildMaxUpload), SpoolDir: spool, Log: a.log},
		Tunnels: tun, DevicePublicURL: a.devicePublicURL(), EventEndpoints: a.eventEndpointsHandler(ctx)})
	// A build upload is bounded by FLOCK_BUILD_MAX_UPLOAD instead, and
	// spooled to disk before its operation runs.
	a.server.UnlimitedBodiesIf(builds.IsUpload)
	restapi.Mount(a.server.Router(), spec, server, restapi.Chain{
		Authn:   a.authn,
		Guard:   guard,
		Between: []func(http.Handler) http.Handler{server.Builds.Spool, idempotency.Middleware(a.pool, auth.NameOf), streams.CaptureRequest},
		Gate:    server.MQTTHooks.Gate,
	})
	docs.Mount(a.server.Router())
	return &modules.Service{Run: func(ctx context.Context) error {
		err := hub.Run(ctx)
		// Tunnel sessions are hijacked connections the HTTP server's
		// drain does not wait for: end them with the api.
		tun.Close()
		return err
	}}, nil
}

// initAuthn builds what resolves a bearer secret to a caller: an OIDC
// user token (the configured issuer's, or in dev mode the in-process
// provider's, which it mounts), an org API key or a device token. The API
// and the registry-proxy's token endpoint share it.
func (a *App) initAuthn(ctx context.Context) (*modules.Service, error) {
	verifier, err := a.userTokenVerifier(ctx)
	if err != nil {
		return nil, err
	}
	a.ready.Add("oidc", verifier.Ready)
	a.authn = auth.NewAuthenticator(verifier, a.tokens, DeviceIssuer(a.cfg.PublicURL), a.pool, a.log)
	return nil, nil
}

// DeviceIssuer is the iss of device tokens: the deployment's public URL.
func DeviceIssuer(publicURL string) string { return strings.TrimRight(publicURL, "/") }

// TokenEndpoint is where devices trade assertions for tokens, and the aud
// their assertions carry.
func TokenEndpoint(publicURL string) string { return DeviceIssuer(publicURL) + "/device/v1/token" }

// DevAudience is the audience of the dev provider's tokens.
const DevAudience = "flock-dev"

// DevIssuer is where the dev provider lives: under the public URL, so
// Swagger UI and other clients on this machine can discover it.
func DevIssuer(publicURL string) string {
	return strings.TrimRight(publicURL, "/") + "/dev/oidc"
}

// userTokenVerifier verifies tokens of the configured issuer, or in dev mode
// without one, of the in-process dev provider, which it mounts.
func (a *App) userTokenVerifier(ctx context.Context) (*oidcverify.Verifier, error) {
	if a.cfg.OIDCIssuer != "" {
		a.log.Info("store engine", "concern", "human identity", "engine", "oidc", "mode", "external", "issuer", a.cfg.OIDCIssuer)
		return oidcverify.New(oidcverify.Config{Issuer: a.cfg.OIDCIssuer, Audience: a.cfg.OIDCAudience})
	}
	issuer := DevIssuer(a.cfg.PublicURL)
	prov, err := devoidc.New(ctx, a.pool, issuer, DevAudience)
	if err != nil {
		return nil, fmt.Errorf("dev OIDC provider: %w", err)
	}
	h := prov.Handler()
	prefix := strings.TrimRight(mustPath(issuer), "/")
	a.server.Router().With(reqinfo.Label("dev-oidc")).Handle(prefix+"/*", http.StripPrefix(prefix, h))
	a.log.Info("store engine", "concern", "human identity", "engine", "dev-oidc", "mode", "embedded", "issuer", issuer,
		"hint", "flock-api dev-token --email you@example.com")
	return oidcverify.New(oidcverify.Config{Issuer: issuer, Audience: DevAudience,
		HTTPClient: &http.Client{Transport: devoidc.Transport(http.StripPrefix(prefix, h))}})
}

func mustPath(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "/"
	}
	return p.Path
}
