package postgres_test

import (
	"context"
	"github.com/flock-io/flock-api/internal/postgres"
	"slices"
	"testing"

	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

func TestAfterCommit(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.Pool(t)

	t.Run("without a transaction it runs at once", func(t *testing.T) {
		ran := false
		postgres.AfterCommit(ctx, func() { ran = true })
		if !ran {
			t.Fatal("did not run")
		}
		postgres.Committed(ctx) // no transaction: nothing to do, no panic
	})

	t.Run("runs after commit, in order, once", func(t *testing.T) {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		txCtx := postgres.WithTx(ctx, tx)
		if postgres.TxFrom(txCtx) != tx {
			t.Fatal("Tx does not return the transaction")
		}
		var order []int
		postgres.AfterCommit(txCtx, func() { order = append(order, 1) })
		postgres.AfterCommit(txCtx, func() { order = append(order, 2) })
		if len(order) != 0 {
			t.Fatalf("ran before commit: %v", order)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		postgres.Committed(txCtx)
		postgres.Committed(txCtx) // a second call runs nothing again
		if !slices.Equal(order, []int{1, 2}) {
			t.Fatalf("order = %v, want [1 2]", order)
		}
		// Registered once the transaction has committed: runs at once.
		postgres.AfterCommit(txCtx, func() { order = append(order, 3) })
		if !slices.Equal(order, []int{1, 2, 3}) {
			t.Fatalf("late registration: order = %v", order)
		}
	})

	t.Run("never runs after a rollback", func(t *testing.T) {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		txCtx := postgres.WithTx(ctx, tx)
		ran := false
		postgres.AfterCommit(txCtx, func() { ran = true })
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if ran {
			t.Fatal("ran after rollback")
		}
	})

	t.Run("a context without the transaction does not see its functions", func(t *testing.T) {
		if postgres.TxFrom(ctx) != nil {
			t.Fatal("Tx of a bare context is not nil")
		}
	})
}
