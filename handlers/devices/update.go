package devices

import (
	"context"
	"errors"
	"fmt"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/reqinfo"
	"github.com/flock-io/flock-api/internal/postgres"
	"net/http"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers/fleets"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/tags"
	"github.com/flock-io/flock-api/workers/nudger"
)

// DeviceUpdate renames, retags, pins or moves a device. A move goes to a
// fleet of the same organisation and architecture, takes the device's own
// variables along and drops a pin to the old fleet's release.
func (h *Devices) DeviceUpdate(ctx context.Context, req api.DeviceUpdateRequestObject) (api.DeviceUpdateResponseObject, error) {
	q := postgres.Queries(ctx, h.Pool)
	d, err := q.DeviceForUpdate(ctx, req.DeviceId)
	if err != nil {
		return nil, fmt.Errorf("load device %s: %w", req.DeviceId, err)
	}
	fleet, pinned := d.FleetID, d.PinnedReleaseID
	b := req.Body
	if b.Name != nil {
		d.Name = strings.TrimSpace(*b.Name)
	}
	if b.Tags != nil {
		if d.Tags, err = tags.Check((*map[string]string)(b.Tags)); err != nil {
			return nil, err
		}
	}
	if b.FleetId != nil && *b.FleetId != d.FleetID {
		to, err := q.FleetGet(ctx, *b.FleetId)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && to.OrgID != d.OrgID) {
			return nil, problem.Invalid("body", "/fleet_id", fmt.Sprintf("fleet %s is not a fleet of this organisation", *b.FleetId))
		}
		if err != nil {
			return nil, fmt.Errorf("load fleet %s: %w", *b.FleetId, err)
		}
		if to.Architecture != d.Architecture {
			return nil, problem.Invalid("body", "/fleet_id", fmt.Sprintf("fleet %s runs %s; this device is %s", to.ID, to.Architecture, d.Architecture))
		}
		d.FleetID = to.ID
		d.PinnedReleaseID = uuid.NullUUID{}
		if err := q.VariablesMoveDevice(ctx, db.VariablesMoveDeviceParams{FleetID: to.ID, DeviceID: uuid.NullUUID{UUID: d.ID, Valid: true}}); err != nil {
			return nil, fmt.Errorf("move variables of %s: %w", d.ID, err)
		}
	}
	if b.PinnedReleaseId.IsSpecified() {
		if b.PinnedReleaseId.IsNull() {
			d.PinnedReleaseID = uuid.NullUUID{}
		} else {
			rel := b.PinnedReleaseId.MustGet()
			if err := fleets.FinalReleaseOf(ctx, q, rel, d.FleetID); err != nil {
				return nil, err
			}
			d.PinnedReleaseID = uuid.NullUUID{UUID: rel, Valid: true}
		}
	}
	if b.PublicUrl != nil {
		if err := h.setPublicURL(ctx, q, &d, b.PublicUrl); err != nil {
			return nil, err
		}
	}
	d, err = q.DeviceUpdate(ctx, db.DeviceUpdateParams{ID: d.ID, Name: d.Name, FleetID: d.FleetID,
		PinnedReleaseID: d.PinnedReleaseID, Tags: d.Tags})
	if err != nil {
		return nil, fmt.Errorf("update device %s: %w", req.DeviceId, err)
	}
	// A move or a pin change gives the device another target; a new name
	// or tags do not.
	if d.FleetID != fleet || d.PinnedReleaseID != pinned {
		nudger.DevicesAfterCommit(ctx, h.Nudge, d.ID)
	}
	out, err := h.device(ctx, d)
	if err != nil {
		return nil, err
	}
	return api.DeviceUpdate200JSONResponse(out), nil
}

// setPublicURL publishes or withdraws the device's public URL. Turning it
// on exposes a device's web server to anyone who has the URL, so that is
// audited as an operation of its own, in the update's transaction.
func (h *Devices) setPublicURL(ctx context.Context, q *db.Queries, d *db.Device, u *api.PublicUrlUpdate) error {
	enabled, port := d.PublicUrlEnabled, d.PublicUrlPort
	if u.Enabled != nil {
		enabled = *u.Enabled
	}
	if u.Port != nil {
		port = int32(*u.Port)
	}
	if err := q.DeviceSetPublicURL(ctx, db.DeviceSetPublicURLParams{ID: d.ID, Enabled: enabled, Port: port}); err != nil {
		return fmt.Errorf("set public URL of %s: %w", d.ID, err)
	}
	turnedOn := enabled && (!d.PublicUrlEnabled || port != d.PublicUrlPort)
	d.PublicUrlEnabled, d.PublicUrlPort = enabled, port
	if !turnedOn || h.Audit == nil {
		return nil
	}
	acc := auth.AccessFrom(ctx)
	ev := audit.NewEvent()
	ev.OrgID, ev.ActorType, ev.ActorID, ev.ActorLabel = d.OrgID, acc.Principal.ActorType(), acc.Principal.ActorID(), acc.Principal.Label()
	ev.Operation, ev.TargetID, ev.RequestID = "device-public-url:enable", d.ID.String(), reqinfo.ID(ctx)
	ev.Outcome, ev.Status = audit.Success, http.StatusOK
	if err := h.Audit.Insert(ctx, q, ev); err != nil {
		return err
	}
	postgres.AfterCommit(ctx, func() { h.Audit.Committed(ev) })
	return nil
}
