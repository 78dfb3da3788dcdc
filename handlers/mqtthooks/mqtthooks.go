// Package mqtthooks answers an external MQTT broker's authentication and
// authorization hooks (EMQX's HTTP authn/authz shape) with the decisions of
// the embedded broker: the same mqttauth.Authenticator, CanPublish and
// CanSubscribe.
package mqtthooks

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net/http"
	"strings"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/internal/devicetopic"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/mqtt/mqttauth"
)

// Prefix is where the hooks live.
const Prefix = "/internal/v1/mqtt/"

// MQTTHooks implements the hook operations.
type MQTTHooks struct {
	// Auth decides; when nil, every client is denied.
	Auth *mqttauth.Authenticator
	// Token, when not empty, is the bearer token the broker must send.
	// Gate checks it; the operations refuse requests Gate did not pass.
	Token string
	// Open lets the hooks answer without a Token (dev mode, where the broker
	// is embedded and the server listens on loopback). Otherwise, with no
	// Token, every hook request is refused: an open hook would tell anyone
	// who can reach the API whether a device token is valid, and admit the
	// service client to anyone who guesses its user name.
	Open bool
}

// MqttHookAuthenticate decides whether a client may connect.
func (h *MQTTHooks) MqttHookAuthenticate(ctx context.Context, req api.MqttHookAuthenticateRequestObject) (api.MqttHookAuthenticateResponseObject, error) {
	if err := h.checkGate(ctx); err != nil {
		return nil, err
	}
	b := req.Body
	deny := api.MqttHookAuthenticate200JSONResponse{Result: api.MqttAuthResultResultDeny}
	if h.Auth == nil {
		slog.WarnContext(ctx, "mqtt hook: connection refused: this process has no MQTT authenticator", who(b.Username), "client_id", devicetopic.Truncate(b.Clientid))
		return deny, nil
	}
	id, err := h.Auth.Authenticate(ctx, b.Clientid, b.Username, []byte(b.Password))
	switch {
	case err == nil:
		out := api.MqttHookAuthenticate200JSONResponse{Result: api.MqttAuthResultResultAllow, IsSuperuser: id.Service}
		if !id.Service {
			exp := id.Expiry.Unix()
			out.ExpireAt = &exp
		}
		return out, nil
	case errors.Is(err, mqttauth.ErrBadCredentials), errors.Is(err, mqttauth.ErrNotAuthorized):
		slog.InfoContext(ctx, "mqtt hook: connection refused", who(b.Username), "client_id", devicetopic.Truncate(b.Clientid), "error", err.Error())
		return deny, nil
	default:
		// Not the client's fault: the broker reads a 5xx as "ignore" and
		// the client may retry.
		return nil, &problem.Error{Status: http.StatusServiceUnavailable, Code: "unavailable",
			Detail: "the device token could not be checked; retry shortly", Err: err,
			Header: http.Header{"Retry-After": {"5"}}}
	}
}

// MqttHookAuthorize decides whether a connected client may publish to a topic
// or subscribe to a filter. The client is who its user name says: the
// broker asks only about connections the authentication hook admitted.
func (h *MQTTHooks) MqttHookAuthorize(ctx context.Context, req api.MqttHookAuthorizeRequestObject) (api.MqttHookAuthorizeResponseObject, error) {
	if err := h.checkGate(ctx); err != nil {
		return nil, err
	}
	b := req.Body
	allowed := false
	if h.Auth != nil {
		if id, ok := h.Auth.Identify(b.Username); ok {
			switch b.Action {
			case api.Publish:
				allowed = mqttauth.CanPublish(id, b.Topic)
			case api.Subscribe:
				allowed = mqttauth.CanSubscribe(id, b.Topic)
			}
		}
	}
	if !allowed {
		slog.InfoContext(ctx, "mqtt hook: "+string(b.Action)+" refused", who(b.Username), "client_id", devicetopic.Truncate(b.Clientid), "topic", devicetopic.Truncate(b.Topic))
		return api.MqttHookAuthorize200JSONResponse{Result: api.MqttAclResultResultDeny}, nil
	}
	return api.MqttHookAuthorize200JSONResponse{Result: api.MqttAclResultResultAllow}, nil
}

type gatePassed struct{}

// Gate is HTTP middleware for the hooks, to sit outside the API's
// authenticator: on the hook paths it checks the hook token when one is set
// (401 problem otherwise) and then removes the Authorization header, which
// carries no user or device credential there. Other paths pass untouched.
func (h *MQTTHooks) Gate(next http.Handler) http.Handler {
	want := sha256.Sum256([]byte(h.Token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, Prefix) {
			next.ServeHTTP(w, r)
			return
		}
		if h.Token == "" && !h.Open {
			problem.Write(w, r, errHooksClosed)
			return
		}
		if h.Token != "" {
			scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
			got := sha256.Sum256([]byte(strings.TrimSpace(token)))
			// Digests compare in constant time whatever the lengths.
			if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
				problem.Write(w, r, errHookToken)
				return
			}
		}
		r = r.WithContext(context.WithValue(r.Context(), gatePassed{}, true))
		r.Header = r.Header.Clone()
		r.Header.Del("Authorization")
		next.ServeHTTP(w, r)
	})
}

var errHookToken = &problem.Error{Status: http.StatusUnauthorized, Code: "unauthorized",
	Detail: "the MQTT hooks need this deployment's hook token as a bearer token",
	Header: http.Header{"WWW-Authenticate": {`Bearer`}}}

var errHooksClosed = &problem.Error{Status: http.StatusForbidden, Code: "hooks_closed",
	Detail: "the MQTT hooks are closed: this deployment sets no FLOCK_MQTT_HOOK_TOKEN (they answer without one only in dev mode)"}

// checkGate refuses a request that did not pass Gate when a token is set,
// so a hook token is never silently ignored because Gate is not mounted, and
// every request when the hooks are closed.
func (h *MQTTHooks) checkGate(ctx context.Context) error {
	if h.Token == "" {
		if !h.Open {
			return errHooksClosed
		}
		return nil
	}
	if passed, _ := ctx.Value(gatePassed{}).(bool); !passed {
		slog.WarnContext(ctx, "mqtt hook refused: a hook token is set but the hooks are not mounted behind MQTTHooks.Gate")
		return errHookToken
	}
	return nil
}

// who names the client in logs: a device by its uuid, anyone else by the
// (bounded) user name it gave.
func who(username string) slog.Attr {
	if id, err := uuid.Parse(username); err == nil && id.String() == username {
		return slog.String("device", username)
	}
	return slog.String("username", devicetopic.Truncate(username))
}
