package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/flock-io/flock-api/internal/postgres"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/audit"
	"github.com/flock-io/flock-api/internal/http/idempotency"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/http/reqinfo"
)

// Level is who may call an operation at all.
type Level int

const (
	// Public operations need no credentials.
	Public Level = iota + 1
	// Authenticated operations take any user or API key.
	Authenticated
	// UserOnly operations take a user's token, never an API key.
	UserOnly
	// OrgRole operations act in one organisation, named by the {orgId} path
	// parameter or by the resource of {fleetId}, {deviceId} or {releaseId},
	// and need at least Rule.MinRole there.
	OrgRole
	// Device operations take a device token only.
	Device
)

// scope finds the organisation a path parameter's resource belongs to and,
// in the same round trip, the user's role there (nil when not a member; the
// zero user, for callers who are not users, has none).
type scope struct {
	param  string
	noun   string
	access func(ctx context.Context, q *db.Queries, id, user uuid.UUID) (org uuid.UUID, role *db.OrgRole, err error)
}

// scopes in the order they are looked for in a path.
var scopes = []scope{
	{"orgId", "organisation", func(ctx context.Context, q *db.Queries, id, user uuid.UUID) (uuid.UUID, *db.OrgRole, error) {
		if user == uuid.Nil {
			return id, nil, nil
		}
		role, err := q.MembershipRole(ctx, db.MembershipRoleParams{OrgID: id, UserID: user})
		if errors.Is(err, pgx.ErrNoRows) {
			return id, nil, nil
		}
		return id, &role, err
	}},
	{"fleetId", "fleet", func(ctx context.Context, q *db.Queries, id, user uuid.UUID) (uuid.UUID, *db.OrgRole, error) {
		r, err := q.FleetAccess(ctx, db.FleetAccessParams{ID: id, UserID: user})
		return r.OrgID, r.Role, err
	}},
	{"deviceId", "device", func(ctx context.Context, q *db.Queries, id, user uuid.UUID) (uuid.UUID, *db.OrgRole, error) {
		r, err := q.DeviceAccess(ctx, db.DeviceAccessParams{ID: id, UserID: user})
		return r.OrgID, r.Role, err
	}},
	{"releaseId", "release", func(ctx context.Context, q *db.Queries, id, user uuid.UUID) (uuid.UUID, *db.OrgRole, error) {
		r, err := q.ReleaseAccess(ctx, db.ReleaseAccessParams{ID: id, UserID: user})
		return r.OrgID, r.Role, err
	}},
	{"buildId", "build", func(ctx context.Context, q *db.Queries, id, user uuid.UUID) (uuid.UUID, *db.OrgRole, error) {
		r, err := q.BuildAccess(ctx, db.BuildAccessParams{ID: id, UserID: user})
		return r.OrgID, r.Role, err
	}},
	{"rolloutId", "rollout", func(ctx context.Context, q *db.Queries, id, user uuid.UUID) (uuid.UUID, *db.OrgRole, error) {
		r, err := q.RolloutAccess(ctx, db.RolloutAccessParams{ID: id, UserID: user})
		return r.OrgID, r.Role, err
	}},
	{"deviceGroupId", "device group", func(ctx context.Context, q *db.Queries, id, user uuid.UUID) (uuid.UUID, *db.OrgRole, error) {
		r, err := q.DeviceGroupAccess(ctx, db.DeviceGroupAccessParams{ID: id, UserID: user})
		return r.OrgID, r.Role, err
	}},
	{"commandId", "command", func(ctx context.Context, q *db.Queries, id, user uuid.UUID) (uuid.UUID, *db.OrgRole, error) {
		r, err := q.CommandAccess(ctx, db.CommandAccessParams{ID: id, UserID: user})
		return r.OrgID, r.Role, err
	}},
	{"endpointId", "event endpoint", func(ctx context.Context, q *db.Queries, id, user uuid.UUID) (uuid.UUID, *db.OrgRole, error) {
		r, err := q.EventEndpointAccess(ctx, db.EventEndpointAccessParams{ID: id, UserID: user})
		return r.OrgID, r.Role, err
	}},
}

// Rule is the access policy of one operation.
type Rule struct {
	Level   Level
	MinRole db.OrgRole
	// Write operations run in one transaction with their audit record.
	Write bool
	// NoAPIKeys refuses API keys on an OrgRole operation (a key must not
	// mint keys that outlive it).
	NoAPIKeys bool
	// NoStore marks an operation whose response carries a secret or a
	// token: no cache may keep any response of it (Cache-Control:
	// no-store), and it cannot take an Idempotency-Key, whose stored
	// response would keep the secret.
	NoStore bool
}

// Policy maps every operationId of the API to its rule.
type Policy map[string]Rule

// Guard enforces a Policy in front of the handlers.
type Guard struct {
	policy   Policy
	pool     *pgxpool.Pool
	recorder *audit.Recorder
	log      *slog.Logger
	success  map[string]int    // operationId -> its 2xx status
	target   map[string]string // operationId -> its last path parameter
	scope    map[string]scope  // operationId -> how to find its organisation
	keyed    map[string]bool   // operationId -> takes an Idempotency-Key
}

// NewGuard checks that policy covers every operation of spec, so an
// operation added to the spec without a rule stops the process from starting
// (and fails the policy test) instead of going out unguarded.
func NewGuard(spec *openapi3.T, policy Policy, pool *pgxpool.Pool, rec *audit.Recorder, log *slog.Logger) (*Guard, error) {
	g := &Guard{policy: policy, pool: pool, recorder: rec, log: log,
		success: map[string]int{}, target: map[string]string{}, scope: map[string]scope{}, keyed: map[string]bool{}}
	var missing []string
	for path, item := range spec.Paths.Map() {
		for _, op := range item.Operations() {
			rule, ok := policy[op.OperationID]
			if !ok {
				missing = append(missing, op.OperationID)
				continue
			}
			if rule.Level == OrgRole {
				found := false
				for _, sc := range scopes {
					if strings.Contains(path, "{"+sc.param+"}") {
						g.scope[op.OperationID], found = sc, true
						break
					}
				}
				if !found {
					return nil, fmt.Errorf("policy of %s needs an organisation in its path %s", op.OperationID, path)
				}
			}
			for code := range op.Responses.Map() {
				if n, err := strconv.Atoi(code); err == nil && n/100 == 2 {
					g.success[op.OperationID] = n
				}
			}
			if i := strings.LastIndex(path, "{"); i >= 0 {
				// Up to its closing brace: actions (/v1/rollouts/{rolloutId}/start)
				// name their target before the verb.
				name, _, _ := strings.Cut(path[i+1:], "}")
				g.target[op.OperationID] = name
			}
			if p := op.Parameters.GetByInAndName("header", idempotency.Header); p != nil {
				if !rule.Write {
					return nil, fmt.Errorf("%s takes an Idempotency-Key but is not a write", op.OperationID)
				}
				if rule.NoStore {
					return nil, fmt.Errorf("%s takes an Idempotency-Key but its response holds a secret, which must not be stored", op.OperationID)
				}
				g.keyed[op.OperationID] = true
			}
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("operations without an access rule: %s", strings.Join(missing, ", "))
	}
	return g, nil
}

// Operation maps a generated Go method name to its operationId.
type Operation func(goName string) string

// StrictMiddleware returns the generated strict server's middleware that
// enforces the policy; opID maps the Go method names it is given back to
// operationIds.
func StrictMiddleware[F ~func(context.Context, http.ResponseWriter, *http.Request, any) (any, error)](g *Guard, opID Operation) func(F, string) F {
	return func(f F, goName string) F {
		op := opID(goName)
		return func(ctx context.Context, w http.ResponseWriter, r *http.Request, req any) (any, error) {
			return g.serve(ctx, w, r, op, func(ctx context.Context) (any, error) { return f(ctx, w, r, req) })
		}
	}
}

var errAuthRequired = &problem.Error{Status: http.StatusUnauthorized, Code: "unauthorized",
	Detail: "this operation needs a bearer token or an API key",
	Header: http.Header{"WWW-Authenticate": {`Bearer`}}}

// serve enforces op's rule, then runs next, or replays the stored response
// of a keyed request that ran before (writing it to w itself).
func (g *Guard) serve(ctx context.Context, w http.ResponseWriter, r *http.Request, op string,
	next func(context.Context) (any, error)) (any, error) {
	rule, ok := g.policy[op]
	if !ok {
		return nil, fmt.Errorf("operation %s has no access rule", op)
	}
	if rule.NoStore {
		// Set before anything can answer, so it holds for every response
		// of the operation, refusals included.
		w.Header().Set("Cache-Control", "no-store")
	}
	ir := idempotency.From(ctx)
	if ir != nil && !g.keyed[op] {
		return nil, problem.Invalid("header", idempotency.Header,
			op+" does not take an Idempotency-Key (its response holds a secret that is never stored, or it is idempotent already)")
	}
	if rule.Level == Public {
		return next(ctx)
	}
	p := PrincipalFrom(ctx)
	if p == nil {
		return nil, errAuthRequired
	}
	acc := &Access{Principal: p, Operation: op}
	if (rule.Level == Device) != (p.Kind == KindDevice) {
		return nil, &problem.Error{Status: http.StatusUnauthorized, Code: "unauthorized",
			Detail: "device tokens are for the device API, and the device API takes only device tokens",
			Header: http.Header{"WWW-Authenticate": {`Bearer`}}}
	}
	switch rule.Level {
	case Device:
		acc.OrgID = p.OrgID
	case UserOnly:
		if p.Kind != KindUser {
			return nil, problem.Errorf(http.StatusForbidden, "forbidden", "%s needs a user's token; API keys cannot call it", op)
		}
	case OrgRole:
		sc := g.scope[op]
		raw := chi.URLParam(r, sc.param)
		notFound := problem.Errorf(http.StatusNotFound, "not_found", "%s %s not found", sc.noun, raw)
		id, err := uuid.Parse(raw)
		if err != nil {
			return nil, notFound
		}
		var user uuid.UUID
		if p.Kind == KindUser {
			user = p.UserID
		}
		orgID, member, err := sc.access(ctx, db.New(g.pool), id, user)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, notFound
		}
		if err != nil {
			return nil, fmt.Errorf("find the organisation of %s %s: %w", sc.noun, id, err)
		}
		role, ok := roleIn(p, orgID, member)
		if !ok {
			return nil, notFound
		}
		acc.OrgID, acc.Role = orgID, role
		var denied error
		switch {
		case rule.NoAPIKeys && p.Kind == KindAPIKey:
			denied = problem.Errorf(http.StatusForbidden, "forbidden", "%s needs a user's token; API keys cannot call it", op)
		case !AtLeast(role, rule.MinRole):
			denied = problem.Errorf(http.StatusForbidden, "forbidden",
				"%s needs the %s role or higher in this organisation; you have %s", op, rule.MinRole, role)
		}
		if denied != nil {
			if rule.Write {
				g.recordFailure(ctx, r, acc, denied)
			}
			return nil, denied
		}
	}
	if ir != nil && ir.Replayable() {
		// Only now: the caller still passes the check the first run
		// passed. Someone removed from the organisation since gets its
		// not-found, not the stored answer.
		if err := ir.Replay(w, op); err != nil {
			return nil, err
		}
		return nil, nil
	}
	ctx = withAccess(ctx, acc)
	if !rule.Write {
		return next(ctx)
	}
	return g.write(ctx, r, acc, next)
}

// roleIn is the caller's role in org. A non-member is told the resource does
// not exist, so the existence of other organisations' things never shows.
func roleIn(p *Principal, org uuid.UUID, member *db.OrgRole) (db.OrgRole, bool) {
	if p.Kind == KindAPIKey {
		return p.KeyRole, p.KeyOrg == org
	}
	if member == nil {
		return "", false
	}
	return *member, true
}

// write runs a changing operation and its audit record in one transaction,
// then what the operation registered with postgres.AfterCommit.
func (g *Guard) write(ctx context.Context, r *http.Request, acc *Access, next func(context.Context) (any, error)) (any, error) {
	tx, err := g.pool.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("begin %s: %w", acc.Operation, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after commit
	txCtx := postgres.WithTx(ctx, tx)
	resp, err := next(txCtx)
	if err != nil {
		_ = tx.Rollback(ctx)
		g.recordFailure(ctx, r, acc, err)
		return nil, err
	}
	if err := g.remember(ctx, tx, acc.Operation, resp); err != nil {
		return nil, err
	}
	ev := g.event(ctx, r, acc, audit.Success, g.success[acc.Operation])
	if acc.OrgID != uuid.Nil {
		if err := g.recorder.Insert(ctx, db.New(tx), ev); err != nil {
			return nil, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit %s: %w", acc.Operation, err)
	}
	if acc.OrgID != uuid.Nil {
		g.recorder.Committed(ev)
	}
	// Only now, with the change in: on any error above the transaction
	// rolls back and what the handler registered is dropped.
	postgres.Committed(txCtx)
	return resp, nil
}

// remember stores the response of a keyed write in the write's transaction,
// so the key and the change commit or vanish together.
func (g *Guard) remember(ctx context.Context, tx pgx.Tx, op string, resp any) error {
	ir := idempotency.From(ctx)
	if ir == nil {
		return nil
	}
	status := g.success[op]
	body := []byte{}
	if status != http.StatusNoContent {
		var err error
		if body, err = json.Marshal(resp); err != nil {
			return fmt.Errorf("encode response of %s for replay: %w", op, err)
		}
	}
	n, err := db.New(tx).IdempotencyInsert(ctx, db.IdempotencyInsertParams{Principal: ir.Principal, Key: ir.Key,
		Operation: op, RequestHash: ir.Hash, Status: int32(status), Body: body})
	if err != nil {
		return fmt.Errorf("store idempotency key: %w", err)
	}
	if n == 0 {
		return problem.New(http.StatusConflict, "idempotency_conflict",
			"a request with this Idempotency-Key completed while this one ran; retry to get its response")
	}
	return nil
}

// recordFailure logs a refused or failed write in its own transaction (the
// operation's own rolled back). Only writes inside an organisation the
// caller belongs to are recorded.
func (g *Guard) recordFailure(ctx context.Context, r *http.Request, acc *Access, cause error) {
	if acc.OrgID == uuid.Nil || acc.Role == "" {
		return
	}
	pe, _ := problem.From(cause)
	ev := g.event(ctx, r, acc, audit.Failure, pe.Status)
	if err := g.recorder.Insert(context.WithoutCancel(ctx), db.New(g.pool), ev); err != nil {
		g.log.ErrorContext(ctx, "record failed write in the audit log", "operation", acc.Operation, "error", err.Error())
		return
	}
	g.recorder.Committed(ev)
}

func (g *Guard) event(ctx context.Context, r *http.Request, acc *Access, outcome string, status int) audit.Event {
	ev := audit.NewEvent()
	ev.OrgID = acc.OrgID
	ev.ActorType, ev.ActorID, ev.ActorLabel = acc.Principal.ActorType(), acc.Principal.ActorID(), acc.Principal.Label()
	ev.Operation, ev.Outcome, ev.Status = acc.Operation, outcome, status
	ev.RequestID = reqinfo.ID(ctx)
	ev.TargetID = acc.target
	if ev.TargetID == "" && r != nil {
		if name := g.target[acc.Operation]; name != "" {
			ev.TargetID = chi.URLParam(r, name)
		}
	}
	return ev
}
