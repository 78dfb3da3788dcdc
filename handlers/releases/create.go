package releases

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/eventdelivery"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/tags"
)

// ReleaseCreate registers a release from images in the platform registry.
// Every service must have an image for the fleet's architecture, or no
// device of the fleet could run it.
func (h *Releases) ReleaseCreate(ctx context.Context, req api.ReleaseCreateRequestObject) (api.ReleaseCreateResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	q := postgres.Queries(ctx, h.Pool)
	fleet, err := q.FleetGet(ctx, req.FleetId)
	if err != nil {
		return nil, fmt.Errorf("load fleet %s: %w", req.FleetId, err)
	}
	t, err := tags.Check((*map[string]string)(req.Body.Tags))
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var fields []problem.FieldError
	for i, s := range req.Body.Services {
		if seen[s.Name] {
			fields = append(fields, problem.FieldError{In: "body", Field: fmt.Sprintf("/services/%d/name", i),
				Detail: fmt.Sprintf("service %q appears twice", s.Name)})
		}
		seen[s.Name] = true
		if Image(s, fleet.Architecture) == nil {
			fields = append(fields, problem.FieldError{In: "body", Field: fmt.Sprintf("/services/%d/images", i),
				Detail: fmt.Sprintf("no image for %s, the fleet's architecture", fleet.Architecture)})
		}
	}
	if len(fields) > 0 {
		return nil, &problem.Error{Status: http.StatusBadRequest, Code: "validation_failed", Detail: fields[0].Detail, Errors: fields}
	}
	org, err := q.OrgByID(ctx, acc.OrgID)
	if err != nil {
		return nil, fmt.Errorf("load org %s: %w", acc.OrgID, err)
	}
	if err := h.checkImages(ctx, org.Slug, req.Body.Services); err != nil {
		return nil, err
	}
	services, err := json.Marshal(req.Body.Services)
	if err != nil {
		return nil, fmt.Errorf("encode services: %w", err)
	}
	status := "draft"
	if req.Body.Status != nil {
		status = string(*req.Body.Status)
	}
	version := ""
	if req.Body.Version != nil {
		version = *req.Body.Version
	}
	r, err := q.ReleaseCreate(ctx, db.ReleaseCreateParams{OrgID: acc.OrgID, FleetID: req.FleetId, Version: version,
		Status: status, Services: services, Tags: t})
	if err != nil {
		return nil, fmt.Errorf("create release in %s: %w", req.FleetId, err)
	}
	if err := eventdelivery.EmitRelease(ctx, q, r, uuid.NullUUID{}, "created", eventdelivery.ReleaseStatusChange(r.Status)); err != nil {
		return nil, err
	}
	if r.Status == "final" {
		if err := h.becameFinal(ctx, q, r.FleetID); err != nil {
			return nil, err
		}
	}
	acc.SetTarget(r.ID.String())
	out, err := Release(r)
	if err != nil {
		return nil, err
	}
	return api.ReleaseCreate201JSONResponse(out), nil
}
