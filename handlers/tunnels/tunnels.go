// Package tunnels serves remote access: a device's WireGuard registration
// (device API), TCP streams to a device's port over a WebSocket, and the
// record of those sessions.
package tunnels

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/pagination"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/tunnelroute"
	"github.com/flock-io/flock-api/internal/wgtunnel"
)

// Keepalive is the persistent keepalive devices are told to set: under
// the 30 s after which common NAT gateways forget a UDP mapping.
const Keepalive = 25

// Tunnels is the remote-access handler.
type Tunnels struct {
	Pool  *pgxpool.Pool
	Audit *audit.Recorder
	// Dial reaches a device's port through its tunnel replica; nil when
	// this deployment runs no tunnels.
	Dial func(ctx context.Context, device uuid.UUID, port uint16) (net.Conn, error)
	// Prefix is the overlay network; Endpoint returns the UDP host:port
	// devices handshake with (a function: the embedded server's port is
	// known once it bound), "" when none.
	Prefix   netip.Prefix
	Endpoint func() string
	// ServerKey is the tunnel servers' private key (its public half goes
	// to devices).
	ServerKey func(context.Context) (wgtunnel.Key, error)
	// Limits of concurrent sessions (0: 8 per device, 16 per caller).
	MaxPerDevice, MaxPerActor int
	// DialTimeout bounds the connection to the device's port.
	DialTimeout time.Duration

	// sessions is every session this process runs, ended by Close.
	mu       sync.Mutex
	sessions map[*session]struct{}
	closed   bool
}

func (h *Tunnels) available() bool {
	return h.Endpoint != nil && h.Endpoint() != "" && h.ServerKey != nil
}

// DeviceTunnelRegister records the device's WireGuard key and answers
// with its overlay settings.
func (h *Tunnels) DeviceTunnelRegister(ctx context.Context, req api.DeviceTunnelRegisterRequestObject) (api.DeviceTunnelRegisterResponseObject, error) {
	if !h.available() {
		return nil, problem.Errorf(http.StatusServiceUnavailable, "tunnels_unavailable", "this deployment runs no tunnel servers")
	}
	p := auth.AccessFrom(ctx).Principal
	pub, err := wgtunnel.ParseKey(req.Body.PublicKey)
	if err != nil {
		return nil, problem.Invalid("body", "/public_key", err.Error())
	}
	key, err := h.ServerKey(ctx)
	if err != nil {
		return nil, err
	}
	if pub == key.PublicKey() {
		return nil, problem.Invalid("body", "/public_key", "that is the tunnel servers' own key")
	}
	t, err := db.New(h.Pool).TunnelRegister(ctx, db.TunnelRegisterParams{DeviceID: p.DeviceID, PublicKey: pub[:]})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "device_tunnels_public_key_key" {
		return nil, problem.Errorf(http.StatusConflict, "public_key_in_use", "another device registered this WireGuard key; make a new key pair")
	}
	if err != nil {
		return nil, fmt.Errorf("register tunnel key of %s: %w", p.DeviceID, err)
	}
	addr, err := tunnelroute.Address(h.Prefix, t.Host)
	if err != nil {
		return nil, problem.Errorf(http.StatusServiceUnavailable, "overlay_full", "%v", err)
	}
	server, err := tunnelroute.Address(h.Prefix, tunnelroute.ServerHost)
	if err != nil {
		return nil, err
	}
	return api.DeviceTunnelRegister200JSONResponse{
		Address: netip.PrefixFrom(addr, h.Prefix.Bits()).String(), Prefix: h.Prefix.String(),
		ServerPublicKey: key.PublicKey().String(), ServerAddress: server.String(),
		Endpoint: h.Endpoint(), KeepaliveSeconds: Keepalive,
	}, nil
}

// DeviceTunnelSessionList pages through a device's sessions.
func (h *Tunnels) DeviceTunnelSessionList(ctx context.Context, req api.DeviceTunnelSessionListRequestObject) (api.DeviceTunnelSessionListResponseObject, error) {
	beforeT, beforeID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	rows, err := db.New(h.Pool).TunnelSessionList(ctx, db.TunnelSessionListParams{DeviceID: req.DeviceId,
		BeforeTime: beforeT, BeforeID: beforeID, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list tunnel sessions of %s: %w", req.DeviceId, err)
	}
	now := time.Now()
	items, next, err := pagination.Page(rows, limit, func(s db.TunnelSession) (time.Time, uuid.UUID) { return s.StartedAt, s.ID },
		func(s db.TunnelSession) (api.TunnelSession, error) { return convert(s, now), nil })
	if err != nil {
		return nil, err
	}
	return api.DeviceTunnelSessionList200JSONResponse(api.TunnelSessionPage{Items: items, NextCursor: next}), nil
}

func convert(s db.TunnelSession, now time.Time) api.TunnelSession {
	out := api.TunnelSession{Id: s.ID, DeviceId: s.DeviceID, ActorType: s.ActorType, ActorId: s.ActorID, ActorLabel: s.ActorLabel,
		Port: int(s.Port), StartedAt: s.StartedAt, BytesToDevice: s.BytesToDevice, BytesFromDevice: s.BytesFromDevice}
	end := now
	if s.EndedAt != nil {
		out.EndedAt, end = s.EndedAt, *s.EndedAt
	} else if s.AliveUntil.Before(now) {
		// The replica that ran it stopped without ending it.
		end = s.AliveUntil
		lost := "lost"
		out.Outcome = &lost
	}
	if s.Outcome != "" {
		o := s.Outcome
		out.Outcome = &o
	}
	d := float32(end.Sub(s.StartedAt).Seconds())
	out.DurationSeconds = &d
	return out
}

// minRole is the organisation's least role for tunnels.
func (h *Tunnels) minRole(ctx context.Context, org uuid.UUID) (db.OrgRole, error) {
	r, err := db.New(h.Pool).OrgTunnelMinRole(ctx, org)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", problem.Errorf(http.StatusNotFound, "not_found", "no such device")
	}
	if err != nil {
		return "", fmt.Errorf("load tunnel role of org %s: %w", org, err)
	}
	return r, nil
}

// Close ends every session this process runs (at shutdown: a WebSocket
// is hijacked, so the HTTP server's drain does not wait for it).
func (h *Tunnels) Close() {
	h.mu.Lock()
	h.closed = true
	all := make([]*session, 0, len(h.sessions))
	for s := range h.sessions {
		all = append(all, s)
	}
	h.mu.Unlock()
	for _, s := range all {
		s.shutdown()
	}
}
