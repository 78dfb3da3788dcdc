package deviceapi

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/http/reqinfo"
)

// DeviceRegister registers a device into the fleet of a provisioning key,
// recording it in the organisation's audit log with the key as the actor.
// Retrying the same registration returns the same device without using the
// key again, so a device whose first response was lost can retry safely.
func (h *DeviceAPI) DeviceRegister(ctx context.Context, req api.DeviceRegisterRequestObject) (api.DeviceRegisterResponseObject, error) {
	b := req.Body
	keyID, err := auth.ParseSecret(auth.ProvisioningKeyPrefix, b.ProvisioningKey)
	if err != nil {
		return nil, unauthorized("invalid_provisioning_key", "the provisioning key is malformed")
	}
	pub, err := base64.RawURLEncoding.DecodeString(b.PublicKey)
	if err != nil || len(pub) != 32 {
		return nil, &problem.Error{Status: http.StatusBadRequest, Code: "validation_failed", Detail: "public_key must be 32 bytes of unpadded base64url",
			Errors: []problem.FieldError{{In: "body", Field: "/public_key", Detail: "not an Ed25519 public key"}}}
	}
	var out api.DeviceRegistration
	var ev audit.Event
	created := false
	err = pgx.BeginFunc(ctx, h.Pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		k, err := q.ProvisioningKeyForUse(ctx, keyID)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && !auth.SecretMatches(b.ProvisioningKey, k.SecretHash)) {
			return unauthorized("invalid_provisioning_key", "unknown provisioning key")
		}
		if err != nil {
			return fmt.Errorf("load provisioning key %s: %w", keyID, err)
		}
		if k.RevokedAt != nil {
			return unauthorized("provisioning_key_revoked", "the provisioning key was revoked at "+k.RevokedAt.UTC().Format(time.RFC3339))
		}
		if k.ExpiresAt != nil && !k.ExpiresAt.After(time.Now()) {
			return unauthorized("provisioning_key_expired", "the provisioning key expired at "+k.ExpiresAt.UTC().Format(time.RFC3339))
		}
		out = api.DeviceRegistration{DeviceId: b.Uuid, OrgId: k.OrgID, FleetId: k.FleetID, TokenEndpoint: h.TokenEndpoint, MqttUrl: h.mqttURL()}

		if existing, err := q.DeviceGet(ctx, b.Uuid); err == nil {
			return h.sameRegistration(existing, k, pub)
		} else if !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("load device %s: %w", b.Uuid, err)
		}
		if k.MaxUses != nil && k.Uses >= *k.MaxUses {
			return unauthorized("provisioning_key_exhausted", fmt.Sprintf("the provisioning key has registered its %d device(s)", *k.MaxUses))
		}
		fleet, err := q.FleetGet(ctx, k.FleetID)
		if err != nil {
			return fmt.Errorf("load fleet %s: %w", k.FleetID, err)
		}
		arch := fleet.Architecture
		if b.Architecture != nil && string(*b.Architecture) != arch {
			return &problem.Error{Status: http.StatusBadRequest, Code: "validation_failed",
				Detail: fmt.Sprintf("the fleet runs %s; this device is %s", arch, *b.Architecture),
				Errors: []problem.FieldError{{In: "body", Field: "/architecture", Detail: "differs from the fleet's"}}}
		}
		d, err := q.DeviceRegister(ctx, db.DeviceRegisterParams{ID: b.Uuid, OrgID: k.OrgID, FleetID: k.FleetID,
			Name: strings.TrimSpace(b.Name), DeviceType: b.DeviceType, Architecture: arch, PublicKey: pub,
			ProvisionedWith: uuid.NullUUID{UUID: k.ID, Valid: true}})
		if errors.Is(err, pgx.ErrNoRows) { // registered concurrently
			existing, err := q.DeviceGet(ctx, b.Uuid)
			if err != nil {
				return fmt.Errorf("load device %s: %w", b.Uuid, err)
			}
			return h.sameRegistration(existing, k, pub)
		}
		if err != nil {
			return fmt.Errorf("register device %s: %w", b.Uuid, err)
		}
		if err := q.ProvisioningKeyUse(ctx, k.ID); err != nil {
			return fmt.Errorf("count use of provisioning key %s: %w", k.ID, err)
		}
		created = true
		slog.InfoContext(ctx, "device registered", "device_id", d.ID, "fleet_id", d.FleetID, "provisioning_key", k.ID)
		ev = audit.NewEvent()
		ev.OrgID, ev.ActorType, ev.ActorID, ev.ActorLabel = k.OrgID, "provisioning_key", k.ID, k.Name
		ev.Operation, ev.TargetID, ev.RequestID = "device:register", d.ID.String(), reqinfo.ID(ctx)
		ev.Outcome, ev.Status = audit.Success, http.StatusCreated
		return h.Audit.Insert(ctx, q, ev)
	})
	if err != nil {
		return nil, err
	}
	if created {
		h.Audit.Committed(ev)
	}
	if created {
		return api.DeviceRegister201JSONResponse(out), nil
	}
	return api.DeviceRegister200JSONResponse(out), nil
}

// sameRegistration accepts a retry (same key pair, same fleet) and refuses
// a uuid that is already someone else's.
func (h *DeviceAPI) sameRegistration(d db.Device, k db.ProvisioningKey, pub []byte) error {
	if !bytes.Equal(d.PublicKey, pub) || d.FleetID != k.FleetID {
		return problem.Errorf(http.StatusConflict, "device_exists",
			"device %s is already registered with another key pair or fleet; generate a new uuid", d.ID)
	}
	return nil
}

// mqttURL is nil when no broker is known, so the field is left out.
func (h *DeviceAPI) mqttURL() *string {
	if h.MQTTURL == nil {
		return nil
	}
	u := h.MQTTURL()
	if u == "" {
		return nil
	}
	return &u
}
