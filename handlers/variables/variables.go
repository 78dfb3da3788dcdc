// Package variables serves configuration variables at fleet and device
// scope, each for every service or for one.
package variables

import (
	"context"
	"errors"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"net/http"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/pagination"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/workers/nudger"
)

// Variables implements the variable operations of both scopes.
type Variables struct {
	Pool *pgxpool.Pool
	// Nudge hears of committed changes to variables; nil: none.
	Nudge nudger.Notifier
}

// MaxMergedSize bounds a device's merged variables (names plus values).
const MaxMergedSize = 1 << 20

// scope is a fleet's own variables or one device's.
type scope struct {
	fleet  uuid.UUID
	device uuid.NullUUID
}

func (h *Variables) deviceScope(ctx context.Context, q *db.Queries, device uuid.UUID) (scope, error) {
	d, err := q.DeviceGet(ctx, device)
	if err != nil {
		return scope{}, fmt.Errorf("load device %s: %w", device, err)
	}
	return scope{fleet: d.FleetID, device: uuid.NullUUID{UUID: device, Valid: true}}, nil
}

func variable(v db.ConfigVariable) api.Variable {
	out := api.Variable{Id: v.ID, FleetId: v.FleetID, Service: v.Service, Name: v.Name, Secret: v.Secret,
		CreatedAt: v.CreatedAt, UpdatedAt: v.UpdatedAt}
	if v.DeviceID.Valid {
		out.DeviceId = &v.DeviceID.UUID
	}
	if !v.Secret {
		out.Value = &v.Value
	}
	return out
}

func (h *Variables) list(ctx context.Context, s scope, p listParams) (api.VariablePage, error) {
	limit := pagination.Limit(p.limit)
	var afterService, afterName *string
	after, err := pagination.DecodeText(p.cursor, 2)
	if err != nil {
		return api.VariablePage{}, err
	}
	if after != nil {
		afterService, afterName = &after[0], &after[1]
	}
	rows, err := db.New(h.Pool).VariableList(ctx, db.VariableListParams{FleetID: s.fleet, DeviceID: s.device,
		AfterService: afterService, AfterName: afterName, MaxRows: limit + 1})
	if err != nil {
		return api.VariablePage{}, fmt.Errorf("list variables: %w", err)
	}
	page := api.VariablePage{Items: make([]api.Variable, 0, len(rows))}
	if len(rows) > int(limit) {
		rows = rows[:limit]
		last := rows[len(rows)-1]
		next := pagination.EncodeText(last.Service, last.Name)
		page.NextCursor = &next
	}
	for _, v := range rows {
		page.Items = append(page.Items, variable(v))
	}
	return page, nil
}

type listParams struct {
	limit  *int
	cursor *string
}

func (h *Variables) create(ctx context.Context, s scope, b *api.VariableCreate) (api.Variable, error) {
	acc := auth.AccessFrom(ctx)
	if strings.HasPrefix(strings.ToUpper(b.Name), "FLOCK_") {
		return api.Variable{}, &problem.Error{Status: http.StatusBadRequest, Code: "validation_failed",
			Detail: "names starting with FLOCK_ are reserved for the platform",
			Errors: []problem.FieldError{{In: "body", Field: "/name", Detail: "the FLOCK_ prefix is reserved"}}}
	}
	service, secret := "", false
	if b.Service != nil {
		service = *b.Service
	}
	if b.Secret != nil {
		secret = *b.Secret
	}
	q := postgres.Queries(ctx, h.Pool)
	v, err := q.VariableCreate(ctx, db.VariableCreateParams{OrgID: acc.OrgID, FleetID: s.fleet, DeviceID: s.device,
		Service: service, Name: b.Name, Value: b.Value, Secret: secret})
	if errors.Is(err, pgx.ErrNoRows) {
		return api.Variable{}, problem.Errorf(http.StatusConflict, "variable_exists",
			"%s is already set here%s; change it with PATCH", b.Name, forService(service))
	}
	if err != nil {
		return api.Variable{}, fmt.Errorf("create variable %s: %w", b.Name, err)
	}
	h.changed(ctx, s) // dropped if checkSize refuses and the change rolls back
	if err := checkSize(ctx, q, s); err != nil {
		return api.Variable{}, err
	}
	acc.SetTarget(v.ID.String())
	return variable(v), nil
}

func (h *Variables) update(ctx context.Context, s scope, id uuid.UUID, b *api.VariableUpdate) (api.Variable, error) {
	q := postgres.Queries(ctx, h.Pool)
	if _, err := h.get(ctx, q, s, id); err != nil {
		return api.Variable{}, err
	}
	v, err := q.VariableUpdate(ctx, db.VariableUpdateParams{ID: id, Value: b.Value})
	if err != nil {
		return api.Variable{}, fmt.Errorf("update variable %s: %w", id, err)
	}
	h.changed(ctx, s)
	if err := checkSize(ctx, q, s); err != nil {
		return api.Variable{}, err
	}
	return variable(v), nil
}

func (h *Variables) delete(ctx context.Context, s scope, id uuid.UUID) error {
	q := postgres.Queries(ctx, h.Pool)
	if _, err := h.get(ctx, q, s, id); err != nil {
		return err
	}
	if _, err := q.VariableDelete(ctx, id); err != nil {
		return fmt.Errorf("delete variable %s: %w", id, err)
	}
	h.changed(ctx, s)
	return nil
}

// changed nudges what the scope's variables reach, once the change commits:
// every device of the fleet, or the one device (any service's variables
// appear in the target state).
func (h *Variables) changed(ctx context.Context, s scope) {
	if s.device.Valid {
		nudger.DevicesAfterCommit(ctx, h.Nudge, s.device.UUID)
	} else {
		nudger.FleetAfterCommit(ctx, h.Nudge, s.fleet)
	}
}

func (h *Variables) get(ctx context.Context, q *db.Queries, s scope, id uuid.UUID) (db.ConfigVariable, error) {
	v, err := q.VariableGet(ctx, db.VariableGetParams{ID: id, FleetID: s.fleet, DeviceID: s.device})
	if errors.Is(err, pgx.ErrNoRows) {
		return v, problem.Errorf(http.StatusNotFound, "not_found", "variable %s not found", id)
	}
	if err != nil {
		return v, fmt.Errorf("load variable %s: %w", id, err)
	}
	return v, nil
}

// checkSize refuses a change that makes some device's merged set larger
// than MaxMergedSize; the caller's transaction then rolls the change back.
func checkSize(ctx context.Context, q *db.Queries, s scope) error {
	var size int64
	var err error
	if s.device.Valid {
		size, err = q.VariableSizeForDevice(ctx, db.VariableSizeForDeviceParams{FleetID: s.fleet, DeviceID: s.device.UUID})
	} else {
		size, err = q.VariableMaxFleetDeviceSize(ctx, s.fleet)
	}
	if err != nil {
		return fmt.Errorf("measure variables: %w", err)
	}
	if size > MaxMergedSize {
		return problem.Errorf(http.StatusRequestEntityTooLarge, "variables_too_large",
			"a device's merged variables would take %d bytes; the limit is %d", size, MaxMergedSize)
	}
	return nil
}

func forService(s string) string {
	if s == "" {
		return ""
	}
	return " for service " + s
}
