package postgres

// The request's transaction, if any, travels through the context, so
// handlers run their queries inside the transaction that the access layer
// opened for a write (and commits together with its audit record) without
// passing it around.

import (
	"context"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
)

type ctxKey struct{}

// request is the request's transaction and what to do once it commits.
type request struct {
	tx pgx.Tx

	mu        sync.Mutex
	after     []func()
	committed bool
}

// WithTx returns ctx carrying tx, with no after-commit functions yet. Whoever
// commits tx calls Committed with the returned ctx afterwards; on rollback
// it simply does not, and the functions are dropped.
func WithTx(ctx context.Context, tx pgx.Tx) context.Context {
	return context.WithValue(ctx, ctxKey{}, &request{tx: tx})
}

// TxFrom returns the transaction in ctx, or nil.
func TxFrom(ctx context.Context) pgx.Tx {
	if r, _ := ctx.Value(ctxKey{}).(*request); r != nil {
		return r.tx
	}
	return nil
}

// AfterCommit runs fn once the request's transaction has committed, and
// never if it rolls back, so side effects outside PostgreSQL (a nudge on the
// message bus) follow only changes that happened. Without a transaction in
// ctx the change is already committed and fn runs now. fn runs on the
// request's goroutine before the response is written: it must be quick and
// must not block (hand work to a queue).
func AfterCommit(ctx context.Context, fn func()) {
	r, _ := ctx.Value(ctxKey{}).(*request)
	if r == nil {
		fn()
		return
	}
	r.mu.Lock()
	if !r.committed {
		r.after = append(r.after, fn)
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	fn() // registered after the commit: the change is in
}

// Committed runs, in registration order, the functions registered with
// AfterCommit on ctx (as returned by With) and forgets them. Call it after a
// successful commit only.
func Committed(ctx context.Context) {
	r, _ := ctx.Value(ctxKey{}).(*request)
	if r == nil {
		return
	}
	r.mu.Lock()
	after := r.after
	r.after, r.committed = nil, true
	r.mu.Unlock()
	for _, fn := range after {
		fn()
	}
}

// Queries returns queries bound to the request's transaction when there is
// one, else to the pool.
func Queries(ctx context.Context, pool *pgxpool.Pool) *db.Queries {
	if tx := TxFrom(ctx); tx != nil {
		return db.New(tx)
	}
	return db.New(pool)
}

// InTx runs fn in a transaction of its own, committing when fn returns nil.
// It is not the request's transaction: AfterCommit does not see it.
func InTx(ctx context.Context, pool *pgxpool.Pool, fn func(q *db.Queries) error) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return fn(db.New(tx)) })
}
