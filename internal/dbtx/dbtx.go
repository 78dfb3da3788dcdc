// Package dbtx carries the request's transaction, if any, through the
// context, so handlers run their queries inside the transaction that the
// access layer opened for a write (and commits together with its audit
// record) without passing it around.
package dbtx

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
)

type ctxKey struct{}

// With returns ctx carrying tx.
func With(ctx context.Context, tx pgx.Tx) context.Context {
	return context.WithValue(ctx, ctxKey{}, tx)
}

// Tx returns the transaction in ctx, or nil.
func Tx(ctx context.Context) pgx.Tx {
	tx, _ := ctx.Value(ctxKey{}).(pgx.Tx)
	return tx
}

// Queries returns queries bound to the request's transaction when there is
// one, else to the pool.
func Queries(ctx context.Context, pool *pgxpool.Pool) *db.Queries {
	if tx := Tx(ctx); tx != nil {
		return db.New(tx)
	}
	return db.New(pool)
}

// InTx runs fn in a transaction of its own, committing when fn returns nil.
func InTx(ctx context.Context, pool *pgxpool.Pool, fn func(q *db.Queries) error) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return fn(db.New(tx)) })
}
