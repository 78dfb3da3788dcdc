// Package devicedata serves what devices send in volume: telemetry series,
// metric names, container logs and update events, read from the telemetry
// store (ClickHouse, or PostgreSQL's tables behind the same interface).
package devicedata

import (
	"time"

	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/telemetry"
)

// DeviceData implements its operations of the OpenAPI document. The guard
// has checked the device belongs to the caller's organisation before any
// of them runs.
type DeviceData struct {
	// Telemetry is where the ingester stores what devices send; nil (a
	// process that mounts no store) answers as if nothing was stored.
	Telemetry telemetry.Store
	// Now is the clock defaults are taken from; nil is time.Now.
	Now func() time.Time
}

func (h *DeviceData) now() time.Time {
	if h.Now != nil {
		return h.Now().UTC()
	}
	return time.Now().UTC()
}

// timeRange checks an optional range: until, when both are given, must be
// after since (an empty range is a mistake, not a question). The stores
// read the zero time as no bound, so an until of exactly the zero time
// (nothing is before it) comes back as none: callers answer that with an
// empty page (see nothingBefore).
func timeRange(since, until *time.Time) (time.Time, time.Time, error) {
	var s, u time.Time
	if since != nil {
		s = since.UTC()
	}
	if until != nil {
		u = until.UTC()
	}
	if since != nil && until != nil && !u.After(s) {
		return s, u, problem.Invalid("query", "until", "until must be after since")
	}
	return s, u, nil
}

// nothingBefore says an until that no stored time is before.
func nothingBefore(until *time.Time) bool { return until != nil && until.IsZero() }
