package deviceapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/targetstate"
)

// DeviceStateGet returns the target state: the release chosen by the device
// pin, else the fleet pin, else the fleet's newest final release; with
// If-None-Match equal to the current version, 304. The version is computed by
// targetstate, as the target nudges' are, so a nudged device finds the
// version it was told about.
func (h *DeviceAPI) DeviceStateGet(ctx context.Context, req api.DeviceStateGetRequestObject) (api.DeviceStateGetResponseObject, error) {
	p := auth.AccessFrom(ctx).Principal
	ts, err := targetstate.ForDevice(ctx, h.Pool, p.DeviceID)
	if err != nil {
		return nil, err
	}
	etag := `"` + ts.Version + `"`
	if inm := req.Params.IfNoneMatch; inm != nil && matches(*inm, etag) {
		return api.DeviceStateGet304Response{Headers: api.DeviceStateGet304ResponseHeaders{ETag: &etag}}, nil
	}
	return api.DeviceStateGet200JSONResponse{Body: ts, Headers: api.DeviceStateGet200ResponseHeaders{ETag: &etag}}, nil
}

// matches implements If-None-Match (RFC 9110 §13.1.2): a list of entity
// tags, weak comparison, or *. A bare version without its quotes matches too:
// the MQTT nudge carries the version unquoted, and a device that sends it
// as it came means the same target.
func matches(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == "*" || t == etag || `"`+t+`"` == etag {
			return true
		}
	}
	return false
}

// DeviceStateUpdate stores the reported state and marks the device seen. A
// state over HTTP and one over MQTT are one sequence (ReportedState.seq): the
// state is stored only when its seq is above the last one applied, whichever
// way that came. A repeat of the last seq is a retry and succeeds without
// changing anything; an older seq is refused with 409, naming the seq it lost
// to, so a device whose counter went back learns where to continue.
func (h *DeviceAPI) DeviceStateUpdate(ctx context.Context, req api.DeviceStateUpdateRequestObject) (api.DeviceStateUpdateResponseObject, error) {
	p := auth.AccessFrom(ctx).Principal
	raw, err := json.Marshal(req.Body)
	if err != nil {
		return nil, fmt.Errorf("encode reported state: %w", err)
	}
	b := req.Body
	var running uuid.NullUUID
	if b.RunningReleaseId != nil {
		running = uuid.NullUUID{UUID: *b.RunningReleaseId, Valid: true}
	}
	str := func(s *string) string {
		if s == nil {
			return ""
		}
		return *s
	}
	q := db.New(h.Pool)
	n, err := q.DeviceReport(ctx, db.DeviceReportParams{ID: p.DeviceID, Reported: raw, Seq: b.Seq,
		RunningReleaseID: running, OsVersion: str(b.OsVersion), AgentVersion: str(b.AgentVersion)})
	if err != nil {
		return nil, fmt.Errorf("store reported state of %s: %w", p.DeviceID, err)
	}
	if n == 1 {
		return h.published(ctx, p, raw)
	}
	stored, err := q.DeviceReportRefused(ctx, p.DeviceID)
	if err != nil {
		return nil, fmt.Errorf("mark device %s seen: %w", p.DeviceID, err)
	}
	if stored == b.Seq {
		// A retry: publish again, since the first try may have stored the
		// state and then failed to publish it. Consumers keep the highest
		// seq, so a second record changes nothing for them.
		return h.published(ctx, p, raw)
	}
	return nil, &problem.Error{Status: http.StatusConflict, Code: "stale_state",
		Detail: fmt.Sprintf("seq %d is below %d, the seq of the newest state already applied (over HTTP or MQTT); report with a higher seq", b.Seq, stored),
		Errors: []problem.FieldError{{In: "body", Field: "/seq", Detail: fmt.Sprintf("must be above %d", stored)}}}
}

// published puts an applied report on flock.device.state.v1, in the
// ingester's DeviceStateRecord form, so the scheduler and the streams see
// HTTP reports as they see MQTT ones. When that fails the device is told to
// retry (503): its retry repeats the seq, which lands in the branch that
// publishes again, so every applied state is published at least once.
func (h *DeviceAPI) published(ctx context.Context, p *auth.Principal, state json.RawMessage) (api.DeviceStateUpdateResponseObject, error) {
	if h.Bus == nil {
		return api.DeviceStateUpdate204Response{}, nil
	}
	rec, err := json.Marshal(struct {
		DeviceID   uuid.UUID       `json:"device_id"`
		OrgID      uuid.UUID       `json:"org_id"`
		FleetID    uuid.UUID       `json:"fleet_id"`
		ReceivedAt time.Time       `json:"received_at"`
		State      json.RawMessage `json:"state"`
	}{p.DeviceID, p.OrgID, p.FleetID, time.Now().UTC(), state})
	if err != nil {
		return nil, fmt.Errorf("encode state record of %s: %w", p.DeviceID, err)
	}
	if err := h.Bus.Publish(ctx, bus.Record{Topic: bus.TopicDeviceState, Key: []byte(p.DeviceID.String()), Value: rec}); err != nil {
		return nil, &problem.Error{Status: http.StatusServiceUnavailable, Code: "unavailable",
			Detail: "the state was stored but could not be passed on; report it again with the same seq",
			Header: http.Header{"Retry-After": {"5"}}, Err: fmt.Errorf("publish state of %s: %w", p.DeviceID, err)}
	}
	return api.DeviceStateUpdate204Response{}, nil
}
