// Package auditlog serves an organisation's audit log.
package auditlog

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/http/pagination"
)

// AuditLog implements the audit log operations.
type AuditLog struct {
	Pool *pgxpool.Pool
}

// AuditEventList lists events newest first within [since, until).
func (h *AuditLog) AuditEventList(ctx context.Context, req api.AuditEventListRequestObject) (api.AuditEventListResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	beforeT, beforeID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	rows, err := db.New(h.Pool).AuditEventList(ctx, db.AuditEventListParams{
		OrgID: acc.OrgID, Since: req.Params.Since, Until: req.Params.Until,
		BeforeTime: beforeT, BeforeID: beforeID, MaxRows: limit + 1,
	})
	if err != nil {
		return nil, fmt.Errorf("list audit events of %s: %w", acc.OrgID, err)
	}
	items, next, err := pagination.Page(rows, limit, func(e db.AuditEvent) (time.Time, uuid.UUID) { return e.OccurredAt, e.ID },
		pagination.Plain(func(e db.AuditEvent) api.AuditEvent {
			return api.AuditEvent{
				Id: e.ID, Time: e.OccurredAt, OrgId: e.OrgID, Operation: e.Operation, TargetId: e.TargetID,
				RequestId: e.RequestID, Outcome: api.AuditEventOutcome(e.Outcome), Status: int(e.Status),
				Actor: api.Actor{Type: api.ActorType(e.ActorType), Id: e.ActorID, Label: e.ActorLabel},
			}
		}))
	if err != nil {
		return nil, err
	}
	return api.AuditEventList200JSONResponse{Items: items, NextCursor: next}, nil
}
