package tunnels

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers/streams"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/http/reqinfo"
	"github.com/flock-io/flock-api/internal/netpipe"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/textclip"
	"github.com/flock-io/flock-api/internal/tunnelroute"
)

// Subprotocol is what the server selects when a client offers it.
const Subprotocol = "flock.tunnel.v1"

// Close codes of a tunnel that could not be made (see the OpenAPI
// document of device-tunnel:open).
const (
	CodeOffline         websocket.StatusCode = 4404
	CodePortClosed      websocket.StatusCode = 4502
	CodeTimeout         websocket.StatusCode = 4504
	CodeTooManySessions websocket.StatusCode = 4429
)

const (
	// renewEvery is how often a running session's row is renewed (its
	// byte counts and its lease); aliveFor is the lease.
	renewEvery = 10 * time.Second
	aliveFor   = 30 * time.Second
)

// DeviceTunnelOpen checks the caller may open tunnels in the device's
// organisation; the response upgrades and runs the session.
func (h *Tunnels) DeviceTunnelOpen(ctx context.Context, req api.DeviceTunnelOpenRequestObject) (api.DeviceTunnelOpenResponseObject, error) {
	r := streams.RequestFrom(ctx)
	if r == nil {
		return nil, problem.Errorf(http.StatusBadRequest, "not_websocket",
			"this operation is a WebSocket: send a WebSocket upgrade request (GET with Upgrade: websocket)")
	}
	acc := auth.AccessFrom(ctx)
	min, err := h.minRole(ctx, acc.OrgID)
	if err != nil {
		return nil, err
	}
	if !auth.AtLeast(acc.Role, min) {
		return nil, problem.Errorf(http.StatusForbidden, "forbidden",
			"tunnels to this organisation's devices need the %s role or higher; you have %s", min, acc.Role)
	}
	if h.Dial == nil {
		return nil, problem.Errorf(http.StatusServiceUnavailable, "tunnels_unavailable", "this deployment runs no tunnel servers")
	}
	return &session{h: h, ctx: ctx, r: r, device: req.DeviceId, port: uint16(req.Params.Port), acc: acc}, nil
}

// session is one tunnel: the response that upgrades, and the stream.
type session struct {
	h      *Tunnels
	ctx    context.Context
	r      *http.Request
	device uuid.UUID
	port   uint16
	acc    *auth.Access

	id       uuid.UUID
	toDevice atomic.Int64
	fromDev  atomic.Int64
	cancel   context.CancelFunc
	once     sync.Once
}

func (s *session) VisitDeviceTunnelOpenResponse(w http.ResponseWriter) error {
	c, err := websocket.Accept(w, s.r, &websocket.AcceptOptions{
		Subprotocols: []string{Subprotocol},
		// The caller authenticated with a bearer token, never a cookie,
		// so another origin's page gains nothing an origin check would
		// keep from it.
		InsecureSkipVerify: true,
	})
	if err != nil {
		return nil // Accept answered the request
	}
	s.run(c)
	return nil
}

func (s *session) shutdown() {
	s.once.Do(func() {
		if s.cancel != nil {
			s.cancel()
		}
	})
}

func (s *session) log() *slog.Logger {
	return slog.Default().With("device_id", s.device, "port", s.port, "session", s.id, "request_id", reqinfo.ID(s.ctx))
}

func (s *session) run(c *websocket.Conn) {
	h := s.h
	// The request's context ends with the handler; the session's own ends
	// when either side closes or the process shuts down.
	ctx, cancel := context.WithCancel(context.WithoutCancel(s.ctx))
	s.cancel = cancel
	defer cancel()
	s.id, _ = uuid.NewV7()
	if !h.track(s) {
		_ = c.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	defer h.untrack(s)

	if err := s.start(ctx); err != nil {
		code, reason := CodeTooManySessions, "too many sessions: "+err.Error()
		if !errors.Is(err, errTooMany) {
			code, reason = websocket.StatusInternalError, "could not record the session"
			s.log().Error("tunnel: start session", "error", err)
		}
		_ = c.Close(code, closeReason(reason))
		return
	}
	dc, err := h.Dial(ctx, s.device, s.port)
	if err != nil {
		code, outcome := closeFor(err)
		s.end(outcome)
		_ = c.Close(code, closeReason(fmt.Sprintf("%s (port %d)", err, s.port)))
		return
	}
	s.log().Info("tunnel: session open", "actor", s.acc.Principal.Label())
	renewDone := make(chan struct{})
	go func() {
		defer close(renewDone)
		s.renew(ctx)
	}()
	nc := websocket.NetConn(ctx, c, websocket.MessageBinary)
	context.AfterFunc(ctx, func() { _ = nc.Close(); _ = dc.Close() })
	netpipe.Pipe(nc, dc, &s.toDevice, &s.fromDev)
	cancel()
	<-renewDone
	s.end("closed")
	s.log().Info("tunnel: session closed", "bytes_to_device", s.toDevice.Load(), "bytes_from_device", s.fromDev.Load())
}

var errTooMany = errors.New("limit reached")

// start records the session and its audit event, unless the device or
// the caller already has as many open sessions as allowed: one
// transaction, serialised per device and per caller across replicas.
func (s *session) start(ctx context.Context) error {
	h := s.h
	p := s.acc.Principal
	maxDev, maxActor := h.MaxPerDevice, h.MaxPerActor
	if maxDev <= 0 {
		maxDev = 8
	}
	if maxActor <= 0 {
		maxActor = 16
	}
	ev := audit.NewEvent()
	ev.OrgID, ev.ActorType, ev.ActorID, ev.ActorLabel = s.acc.OrgID, p.ActorType(), p.ActorID(), p.Label()
	ev.Operation, ev.TargetID, ev.RequestID = "device-tunnel:open", s.device.String(), reqinfo.ID(s.ctx)
	ev.Outcome, ev.Status = audit.Success, http.StatusSwitchingProtocols
	err := postgres.InTx(ctx, h.Pool, func(q *db.Queries) error {
		if err := q.TunnelSessionLock(ctx, "tunnel-device:"+s.device.String()); err != nil {
			return err
		}
		if err := q.TunnelSessionLock(ctx, "tunnel-actor:"+p.ActorID().String()); err != nil {
			return err
		}
		open, err := q.TunnelSessionsOpen(ctx, db.TunnelSessionsOpenParams{DeviceID: s.device, ActorID: p.ActorID()})
		if err != nil {
			return err
		}
		if open.DeviceOpen >= int64(maxDev) {
			return fmt.Errorf("%w: the device has %d open sessions", errTooMany, open.DeviceOpen)
		}
		if open.ActorOpen >= int64(maxActor) {
			return fmt.Errorf("%w: you have %d open sessions", errTooMany, open.ActorOpen)
		}
		if err := q.TunnelSessionStart(ctx, db.TunnelSessionStartParams{ID: s.id, OrgID: s.acc.OrgID, DeviceID: s.device,
			ActorType: p.ActorType(), ActorID: p.ActorID(), ActorLabel: p.Label(), Port: int32(s.port),
			RequestID: reqinfo.ID(s.ctx), AliveUntil: time.Now().Add(aliveFor)}); err != nil {
			return err
		}
		return h.Audit.Insert(ctx, q, ev)
	})
	if err != nil {
		if errors.Is(err, errTooMany) {
			return err
		}
		return fmt.Errorf("record tunnel session to %s: %w", s.device, err)
	}
	h.Audit.Committed(ev)
	return nil
}

func (s *session) renew(ctx context.Context) {
	t := time.NewTicker(renewEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := db.New(s.h.Pool).TunnelSessionRenew(ctx, db.TunnelSessionRenewParams{ID: s.id,
				AliveUntil: time.Now().Add(aliveFor), BytesToDevice: s.toDevice.Load(), BytesFromDevice: s.fromDev.Load()}); err != nil && ctx.Err() == nil {
				s.log().Warn("tunnel: renew session", "error", err)
			}
		}
	}
}

func (s *session) end(outcome string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.New(s.h.Pool).TunnelSessionEnd(ctx, db.TunnelSessionEndParams{ID: s.id, Outcome: outcome,
		BytesToDevice: s.toDevice.Load(), BytesFromDevice: s.fromDev.Load()}); err != nil {
		s.log().Warn("tunnel: end session", "error", err)
	}
}

func closeFor(err error) (websocket.StatusCode, string) {
	switch {
	case errors.Is(err, tunnelroute.ErrOffline):
		return CodeOffline, "device_offline"
	case errors.Is(err, tunnelroute.ErrPortClosed):
		return CodePortClosed, "port_closed"
	case errors.Is(err, tunnelroute.ErrTimeout):
		return CodeTimeout, "device_timeout"
	}
	return websocket.StatusInternalError, "failed"
}

// closeReason keeps a close reason within the 123 bytes a close frame
// holds, as the valid UTF-8 it must be.
func closeReason(s string) string { return textclip.Ellipsis(s, 123) }

func (h *Tunnels) track(s *session) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	if h.sessions == nil {
		h.sessions = map[*session]struct{}{}
	}
	h.sessions[s] = struct{}{}
	return true
}

func (h *Tunnels) untrack(s *session) {
	h.mu.Lock()
	delete(h.sessions, s)
	h.mu.Unlock()
}
