// Package deviceapi serves what devices call: registration with a
// provisioning key, device tokens for signed assertions, the target state and
// the reported state, and the keys that sign device tokens.
package deviceapi

import (
	"net/http"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// DeviceAPI implements the device operations.
type DeviceAPI struct {
	Pool   *pgxpool.Pool
	Tokens *devicetoken.Service
	// TokenEndpoint is the URL devices put in their assertions' aud.
	TokenEndpoint string
	Audit         *audit.Recorder
	// MQTTURL tells registration the broker devices connect to; nil or ""
	// means none.
	MQTTURL func() string
	// Bus carries each applied HTTP report to flock.device.state.v1, as the
	// ingester does for MQTT reports; nil publishes nothing.
	Bus *bus.Bus
}

// unauthorized is the 401 of the device API, with a detail that says which
// check failed so a device's operator can act on it.
func unauthorized(code, detail string) *problem.Error {
	return &problem.Error{Status: http.StatusUnauthorized, Code: code, Detail: detail,
		Header: http.Header{"WWW-Authenticate": {`Bearer error="invalid_token"`}}}
}
