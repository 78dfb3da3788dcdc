// Package streams serves the live event streams (Server-Sent Events and WebSocket) of organisations, fleets, device groups, devices, rollouts and device logs.
package streams

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
	live "github.com/flock-io/flock-api/internal/streams"
	"github.com/flock-io/flock-api/internal/telemetry"
)

// Streams implements its operations of the OpenAPI document.
type Streams struct {
	Pool *pgxpool.Pool
	// Hub feeds the streams; nil answers every stream with 503 (a process
	// that does not run the api target's hub).
	Hub *live.Hub
	// Telemetry holds the log history a log stream starts with.
	Telemetry telemetry.Store
	// Heartbeat is the idle time before a heartbeat; default 15s.
	Heartbeat time.Duration
	// GroupRefresh is how often a device group stream reads the group's
	// members again (devices join and leave a group as their names and
	// tags change); default 30s.
	GroupRefresh time.Duration
	// Recheck is how often an open stream asks whether its caller may still
	// read the organisation; default 30s.
	Recheck time.Duration
}

const defaultGroupRefresh = 30 * time.Second

// Event types each scope carries.
var (
	deviceTypes = live.TypesOf(live.TypeState, live.TypeConnectivity, live.TypeUpdate, live.TypeCommand)
	fleetTypes  = deviceTypes | live.TypesOf(live.TypeRollout)
	// A rollout stream carries the rollout's own events and the
	// device.update events of the devices taking its release.
	rolloutTypes = live.TypesOf(live.TypeRollout, live.TypeUpdate)
	logTypes     = live.TypesOf(live.TypeLog)
	// Always sent, whatever types asked for.
	controlTypes = live.TypesOf(live.TypeGap, live.TypeError)
)

type requestKey struct{}

// CaptureRequest keeps the request in its context for the WebSocket
// operations: the strict server hands handlers only the parsed
// parameters, and upgrading needs the request itself.
func CaptureRequest(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "" {
			r = r.WithContext(context.WithValue(r.Context(), requestKey{}, r))
		}
		next.ServeHTTP(w, r)
	})
}

// RequestFrom returns the request CaptureRequest kept, or nil when the
// request asked for no upgrade.
func RequestFrom(ctx context.Context) *http.Request {
	r, _ := ctx.Value(requestKey{}).(*http.Request)
	return r
}

// stream is the response of every stream operation: its Visit methods
// run the stream on the response writer (the strict server's way to
// stream).
type stream struct {
	ctx context.Context
	h   *Streams
	st  *live.Stream
	ws  bool
}

func (s stream) visit(w http.ResponseWriter) error {
	var err error
	if !s.ws {
		err = s.h.Hub.ServeSSE(s.ctx, w, s.st)
	} else {
		r, _ := s.ctx.Value(requestKey{}).(*http.Request)
		if r == nil {
			return problem.Errorf(http.StatusBadRequest, "not_websocket", "this operation is a WebSocket: send a WebSocket upgrade request")
		}
		err = s.h.Hub.ServeWebSocket(s.ctx, w, r, s.st)
	}
	if errors.Is(err, live.ErrStopped) {
		// The process is shutting down; another replica serves the stream.
		return &problem.Error{Status: http.StatusServiceUnavailable, Code: "unavailable",
			Detail: "this server is shutting down; reconnect", Header: http.Header{"Retry-After": {"1"}}, Err: err}
	}
	return err
}

func (s stream) VisitOrgEventsStreamResponse(w http.ResponseWriter) error         { return s.visit(w) }
func (s stream) VisitOrgEventsWebsocketResponse(w http.ResponseWriter) error      { return s.visit(w) }
func (s stream) VisitFleetEventsStreamResponse(w http.ResponseWriter) error       { return s.visit(w) }
func (s stream) VisitFleetEventsWebsocketResponse(w http.ResponseWriter) error    { return s.visit(w) }
func (s stream) VisitDeviceGroupEventsStreamResponse(w http.ResponseWriter) error { return s.visit(w) }
func (s stream) VisitDeviceGroupEventsWebsocketResponse(w http.ResponseWriter) error {
	return s.visit(w)
}
func (s stream) VisitDeviceEventsStreamResponse(w http.ResponseWriter) error     { return s.visit(w) }
func (s stream) VisitDeviceEventsWebsocketResponse(w http.ResponseWriter) error  { return s.visit(w) }
func (s stream) VisitRolloutEventsStreamResponse(w http.ResponseWriter) error    { return s.visit(w) }
func (s stream) VisitRolloutEventsWebsocketResponse(w http.ResponseWriter) error { return s.visit(w) }
func (s stream) VisitDeviceLogStreamResponse(w http.ResponseWriter) error        { return s.visit(w) }
func (s stream) VisitDeviceLogWebsocketResponse(w http.ResponseWriter) error     { return s.visit(w) }

// open checks what every stream takes (the hub, the types, the resume id)
// and returns the response that runs it.
func (h *Streams) open(ctx context.Context, ws bool, kind live.Kind, f *live.Filter, scope live.Types,
	types *api.StreamTypes, query, header *string) (stream, error) {
	if h.Hub == nil {
		return stream{}, problem.Errorf(http.StatusServiceUnavailable, "unavailable", "this process serves no streams")
	}
	if ws && ctx.Value(requestKey{}) == nil {
		return stream{}, problem.Errorf(http.StatusBadRequest, "not_websocket",
			"this operation is a WebSocket: send a WebSocket upgrade request (GET with Upgrade: websocket)")
	}
	if types != nil {
		var want live.Types
		for _, t := range *types {
			typ, ok := live.ParseType(string(t))
			if !ok || !(scope | controlTypes).Has(typ) {
				return stream{}, problem.Invalid("query", "types", fmt.Sprintf("%s is not an event type of this stream (it carries %s)", t, names(scope)))
			}
			want |= live.TypesOf(typ)
		}
		if want&scope == 0 {
			want = scope // only gap and/or error: the stream still carries all
		}
		f.Types = want & scope
	} else {
		f.Types = scope
	}
	st := &live.Stream{Kind: kind, Filter: f, Heartbeat: h.Heartbeat, Recheck: AccessCheck(ctx, h.Pool), RecheckEvery: h.Recheck}
	in, field, id := "query", "last_event_id", query
	if id == nil && header != nil {
		in, field, id = "header", "Last-Event-ID", header
	}
	if id != nil {
		p, err := live.Decode(*id, kind)
		if err != nil {
			return stream{}, problem.Invalid(in, field, "not an event id of this stream: "+err.Error())
		}
		st.From = p
	}
	return stream{ctx: ctx, h: h, st: st, ws: ws}, nil
}

// AccessCheck asks whether the caller of a stream opened in ctx may still
// read its organisation: the guard let the stream open, but a member
// removed or a key deleted since must not keep reading it. It is nil for
// callers whose access cannot end while a stream is open.
func AccessCheck(ctx context.Context, pool *pgxpool.Pool) func(context.Context) (bool, error) {
	acc := auth.AccessFrom(ctx)
	if acc == nil || acc.Principal == nil {
		return nil
	}
	p, org := acc.Principal, acc.OrgID
	var params db.StreamAccessHoldsParams
	switch p.Kind {
	case auth.KindUser:
		params = db.StreamAccessHoldsParams{ActorID: p.UserID, OrgID: org}
	case auth.KindAPIKey:
		params = db.StreamAccessHoldsParams{IsKey: true, ActorID: p.KeyID, OrgID: org}
	default:
		return nil
	}
	return func(ctx context.Context) (bool, error) {
		ok, err := db.New(pool).StreamAccessHolds(ctx, params)
		if err != nil {
			return false, fmt.Errorf("recheck stream access of %s in %s: %w", p.Label(), org, err)
		}
		return ok, nil
	}
}

func names(ts live.Types) string {
	var out []string
	for t := live.TypeState; t <= live.TypeRollout; t++ {
		if ts.Has(t) {
			out = append(out, t.String())
		}
	}
	return strings.Join(out, ", ")
}

// org is the organisation the guard resolved from the path.
func org(ctx context.Context) uuid.UUID {
	if a := auth.AccessFrom(ctx); a != nil {
		return a.OrgID
	}
	return uuid.Nil
}

func (h *Streams) orgEvents(ctx context.Context, ws bool, types *api.StreamTypes, q, hdr *string) (stream, error) {
	return h.open(ctx, ws, live.KindEvents, &live.Filter{Org: org(ctx)}, fleetTypes, types, q, hdr)
}

func (h *Streams) OrgEventsStream(ctx context.Context, req api.OrgEventsStreamRequestObject) (api.OrgEventsStreamResponseObject, error) {
	s, err := h.orgEvents(ctx, false, req.Params.Types, req.Params.LastEventId, req.Params.LastEventID)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (h *Streams) OrgEventsWebsocket(ctx context.Context, req api.OrgEventsWebsocketRequestObject) (api.OrgEventsWebsocketResponseObject, error) {
	s, err := h.orgEvents(ctx, true, req.Params.Types, req.Params.LastEventId, nil)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (h *Streams) fleetEvents(ctx context.Context, ws bool, fleet uuid.UUID, types *api.StreamTypes, q, hdr *string) (stream, error) {
	return h.open(ctx, ws, live.KindEvents, &live.Filter{Org: org(ctx), Fleet: fleet}, fleetTypes, types, q, hdr)
}

func (h *Streams) FleetEventsStream(ctx context.Context, req api.FleetEventsStreamRequestObject) (api.FleetEventsStreamResponseObject, error) {
	s, err := h.fleetEvents(ctx, false, req.FleetId, req.Params.Types, req.Params.LastEventId, req.Params.LastEventID)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (h *Streams) FleetEventsWebsocket(ctx context.Context, req api.FleetEventsWebsocketRequestObject) (api.FleetEventsWebsocketResponseObject, error) {
	s, err := h.fleetEvents(ctx, true, req.FleetId, req.Params.Types, req.Params.LastEventId, nil)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (h *Streams) deviceEvents(ctx context.Context, ws bool, device uuid.UUID, types *api.StreamTypes, q, hdr *string) (stream, error) {
	return h.open(ctx, ws, live.KindEvents, &live.Filter{Org: org(ctx), Device: device}, deviceTypes, types, q, hdr)
}

func (h *Streams) DeviceEventsStream(ctx context.Context, req api.DeviceEventsStreamRequestObject) (api.DeviceEventsStreamResponseObject, error) {
	s, err := h.deviceEvents(ctx, false, req.DeviceId, req.Params.Types, req.Params.LastEventId, req.Params.LastEventID)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (h *Streams) DeviceEventsWebsocket(ctx context.Context, req api.DeviceEventsWebsocketRequestObject) (api.DeviceEventsWebsocketResponseObject, error) {
	s, err := h.deviceEvents(ctx, true, req.DeviceId, req.Params.Types, req.Params.LastEventId, nil)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// groupEvents reads the group's members when the stream opens and again
// every GroupRefresh while it runs: a device that joins the group (a new
// tag, a rename) shows within that time, one that leaves stops showing.
func (h *Streams) groupEvents(ctx context.Context, ws bool, group uuid.UUID, types *api.StreamTypes, q, hdr *string) (stream, error) {
	o := org(ctx)
	f := &live.Filter{Org: o}
	refresh := func(ctx context.Context) error {
		ids, err := db.New(h.Pool).StreamDeviceGroupMembers(ctx, db.StreamDeviceGroupMembersParams{OrgID: o, DeviceGroupID: group})
		if err != nil {
			return fmt.Errorf("members of device group %s: %w", group, err)
		}
		f.SetMembers(ids)
		return nil
	}
	if err := refresh(ctx); err != nil {
		return stream{}, err
	}
	s, err := h.open(ctx, ws, live.KindEvents, f, deviceTypes, types, q, hdr)
	if err != nil {
		return stream{}, err
	}
	s.st.Refresh = refresh
	s.st.RefreshEvery = h.GroupRefresh
	if s.st.RefreshEvery <= 0 {
		s.st.RefreshEvery = defaultGroupRefresh
	}
	return s, nil
}

func (h *Streams) DeviceGroupEventsStream(ctx context.Context, req api.DeviceGroupEventsStreamRequestObject) (api.DeviceGroupEventsStreamResponseObject, error) {
	s, err := h.groupEvents(ctx, false, req.DeviceGroupId, req.Params.Types, req.Params.LastEventId, req.Params.LastEventID)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (h *Streams) DeviceGroupEventsWebsocket(ctx context.Context, req api.DeviceGroupEventsWebsocketRequestObject) (api.DeviceGroupEventsWebsocketResponseObject, error) {
	s, err := h.groupEvents(ctx, true, req.DeviceGroupId, req.Params.Types, req.Params.LastEventId, nil)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (h *Streams) rolloutEvents(ctx context.Context, ws bool, id uuid.UUID, types *api.StreamTypes, q, hdr *string) (stream, error) {
	r, err := db.New(h.Pool).RolloutGet(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return stream{}, problem.Errorf(http.StatusNotFound, "not_found", "rollout %s not found", id)
	}
	if err != nil {
		return stream{}, fmt.Errorf("load rollout %s: %w", id, err)
	}
	f := &live.Filter{Org: r.OrgID, Fleet: r.FleetID, Rollout: r.ID, Release: r.ReleaseID}
	return h.open(ctx, ws, live.KindRollout, f, rolloutTypes, types, q, hdr)
}

func (h *Streams) RolloutEventsStream(ctx context.Context, req api.RolloutEventsStreamRequestObject) (api.RolloutEventsStreamResponseObject, error) {
	s, err := h.rolloutEvents(ctx, false, req.RolloutId, req.Params.Types, req.Params.LastEventId, req.Params.LastEventID)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (h *Streams) RolloutEventsWebsocket(ctx context.Context, req api.RolloutEventsWebsocketRequestObject) (api.RolloutEventsWebsocketResponseObject, error) {
	s, err := h.rolloutEvents(ctx, true, req.RolloutId, req.Params.Types, req.Params.LastEventId, nil)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// logParams are the parameters both log stream operations take.
type logParams struct {
	since   *time.Time
	service *string
	q       *string
	tail    *int
	last    *string
	header  *string
}

const defaultTail = 100

func (h *Streams) deviceLog(ctx context.Context, ws bool, device uuid.UUID, p logParams) (stream, error) {
	if h.Telemetry == nil {
		return stream{}, problem.Errorf(http.StatusServiceUnavailable, "unavailable", "this process has no log store")
	}
	sc, err := db.New(h.Pool).DeviceScope(ctx, device)
	if errors.Is(err, pgx.ErrNoRows) {
		return stream{}, problem.Errorf(http.StatusNotFound, "not_found", "device %s not found", device)
	}
	if err != nil {
		return stream{}, fmt.Errorf("load device %s: %w", device, err)
	}
	f := &live.Filter{Org: sc.OrgID, Device: device}
	if p.service != nil {
		f.Service = *p.service
	}
	if p.q != nil {
		f.Contains = strings.ToLower(*p.q)
	}
	s, err := h.open(ctx, ws, live.KindLogs, f, logTypes, nil, p.last, p.header)
	if err != nil {
		return stream{}, err
	}
	lh := &live.LogHistory{Org: sc.OrgID, Fleet: sc.FleetID, Device: device, Tail: defaultTail}
	if p.tail != nil {
		lh.Tail = *p.tail
	}
	if p.since != nil {
		lh.Since = *p.since
	}
	store := h.Telemetry
	lh.Page = func(ctx context.Context, hq live.HistoryQuery) ([]live.LogLineIn, error) {
		q := telemetry.LogQuery{Service: f.Service, Since: hq.Since, Contains: derefOr(p.q), OldestFirst: hq.OldestFirst, Limit: hq.Limit}
		if hq.After != nil {
			q.After = &telemetry.LogCursor{TS: hq.After.TS, Service: hq.After.Service, Seq: hq.After.Seq}
		}
		lines, err := store.Logs(ctx, device, q)
		if err != nil {
			return nil, fmt.Errorf("log history of device %s: %w", device, err)
		}
		out := make([]live.LogLineIn, len(lines))
		for i, l := range lines {
			out[i] = live.LogLineIn{Service: l.Service, Seq: l.Seq, TS: l.TS, Stream: l.Stream, Line: l.Line}
		}
		return out, nil
	}
	s.st.Logs = lh
	return s, nil
}

func derefOr(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func (h *Streams) DeviceLogStream(ctx context.Context, req api.DeviceLogStreamRequestObject) (api.DeviceLogStreamResponseObject, error) {
	p := req.Params
	s, err := h.deviceLog(ctx, false, req.DeviceId, logParams{since: p.Since, service: p.Service, q: p.Q, tail: p.Tail, last: p.LastEventId, header: p.LastEventID})
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (h *Streams) DeviceLogWebsocket(ctx context.Context, req api.DeviceLogWebsocketRequestObject) (api.DeviceLogWebsocketResponseObject, error) {
	p := req.Params
	s, err := h.deviceLog(ctx, true, req.DeviceId, logParams{since: p.Since, service: p.Service, q: p.Q, tail: p.Tail, last: p.LastEventId})
	if err != nil {
		return nil, err
	}
	return s, nil
}
