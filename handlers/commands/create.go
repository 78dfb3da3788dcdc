package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/livestate"
	"github.com/flock-io/flock-api/internal/postgres"
	cmdworker "github.com/flock-io/flock-api/workers/commands"
)

// defaultExpiresIn is CommandCreate.expires_in's default, in seconds.
const defaultExpiresIn = 3600

// DeviceCommandCreate stores a pending command for the device; once the
// write commits it goes to the device (now if it is connected, else when
// it next connects, until it expires). A type the device's agent does not
// support is refused, so a device is never sent what it cannot do.
func (h *Commands) DeviceCommandCreate(ctx context.Context, req api.DeviceCommandCreateRequestObject) (api.DeviceCommandCreateResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	b := req.Body
	typ := string(b.Type)
	switch {
	case typ == cmdworker.TypeRestartService && b.Service == nil:
		return nil, problem.Invalid("body", "/service", "restart_service needs the service to restart")
	case typ != cmdworker.TypeRestartService && b.Service != nil:
		return nil, problem.Invalid("body", "/service", typ+" takes no service; only restart_service does")
	}
	q := postgres.Queries(ctx, h.Pool)
	dev, err := q.CommandDevice(ctx, req.DeviceId)
	if errors.Is(err, pgx.ErrNoRows) {
		// Deleted since the guard looked.
		err = problem.ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("load device %s: %w", req.DeviceId, err)
	}
	agent := dev.AgentVersion
	if !cmdworker.Supports(agent, typ) {
		// The ingester writes a report to the KV store before PostgreSQL,
		// and the device reads show the KV copy: a device the API already
		// shows with a new agent must not be refused meanwhile.
		agent = h.liveAgentVersion(ctx, dev.ID, agent)
	}
	if !cmdworker.Supports(agent, typ) {
		reported := "has not reported an agent version"
		if agent != "" {
			reported = fmt.Sprintf("reports agent version %q", agent)
		}
		return nil, problem.Errorf(http.StatusConflict, "command_unsupported",
			"device %s %s; %s needs agent %s or later", dev.ID, reported, typ, cmdworker.MinAgentVersion[typ])
	}
	expiresIn := defaultExpiresIn
	if b.ExpiresIn != nil {
		expiresIn = *b.ExpiresIn
	}
	p := acc.Principal
	c, err := q.CommandCreate(ctx, db.CommandCreateParams{OrgID: dev.OrgID, FleetID: dev.FleetID, DeviceID: dev.ID,
		Type: typ, Service: b.Service, ExpiresIn: int32(expiresIn),
		CreatedByType: p.ActorType(), CreatedByID: p.ActorID(), CreatedByLabel: p.Label()})
	if err != nil {
		return nil, fmt.Errorf("create command for device %s: %w", dev.ID, err)
	}
	acc.SetTarget(c.ID.String())
	if h.Send != nil {
		h.Send.Announce(ctx, c)
	}
	return api.DeviceCommandCreate201JSONResponse(convert(c)), nil
}

// liveAgentVersion is the agent version of the device's newest state in the
// KV store, or stored when there is none (or the store fails: PostgreSQL's
// copy is only a moment older).
func (h *Commands) liveAgentVersion(ctx context.Context, device uuid.UUID, stored string) string {
	if h.KV == nil {
		return stored
	}
	live, err := livestate.ReadState(ctx, h.KV, device)
	if err != nil || live == nil {
		return stored
	}
	var st struct {
		AgentVersion string `json:"agent_version"`
	}
	if json.Unmarshal(live.State, &st) != nil || st.AgentVersion == "" {
		return stored
	}
	return st.AgentVersion
}
