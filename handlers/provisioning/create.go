package provisioning

import (
	"context"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// ProvisioningKeyCreate creates a key; the secret is returned once and only
// its hash is stored.
func (h *Provisioning) ProvisioningKeyCreate(ctx context.Context, req api.ProvisioningKeyCreateRequestObject) (api.ProvisioningKeyCreateResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	if e := req.Body.ExpiresAt; e != nil && !e.After(time.Now()) {
		return nil, problem.Invalid("body", "/expires_at", "expires_at is in the past")
	}
	id := uuid.New()
	secret, prefix, hash, err := auth.NewSecret(auth.ProvisioningKeyPrefix, id)
	if err != nil {
		return nil, fmt.Errorf("generate provisioning key: %w", err)
	}
	var maxUses *int32
	if req.Body.MaxUses != nil {
		m := int32(*req.Body.MaxUses)
		maxUses = &m
	}
	var createdBy uuid.NullUUID
	if acc.Principal.Kind == auth.KindUser {
		createdBy = uuid.NullUUID{UUID: acc.Principal.UserID, Valid: true}
	}
	k, err := postgres.Queries(ctx, h.Pool).ProvisioningKeyCreate(ctx, db.ProvisioningKeyCreateParams{
		ID: id, OrgID: acc.OrgID, FleetID: req.FleetId, Name: strings.TrimSpace(req.Body.Name), Prefix: prefix,
		SecretHash: hash, CreatedBy: createdBy, ExpiresAt: req.Body.ExpiresAt, MaxUses: maxUses,
	})
	if err != nil {
		return nil, fmt.Errorf("create provisioning key for %s: %w", req.FleetId, err)
	}
	acc.SetTarget(id.String())
	out := key(k)
	return api.ProvisioningKeyCreate201JSONResponse{Id: out.Id, FleetId: out.FleetId, Name: out.Name, Prefix: out.Prefix,
		Uses: out.Uses, MaxUses: out.MaxUses, ExpiresAt: out.ExpiresAt, CreatedBy: out.CreatedBy, CreatedAt: out.CreatedAt,
		Secret: secret}, nil
}
