package postgres_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

func TestMigrationsRoundTrip(t *testing.T) {
	ctx := context.Background()
	pool, err := postgres.Open(ctx, pgtest.EmptyURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	m, err := postgres.NewMigrator(pool, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()

	if pending, err := m.Pending(ctx); err != nil || !pending {
		t.Fatalf("fresh database: pending = %v, %v; want true", pending, err)
	}
	n, err := m.Up(ctx)
	if err != nil || n == 0 {
		t.Fatalf("up = %d, %v", n, err)
	}
	if pending, err := m.Pending(ctx); err != nil || pending {
		t.Fatalf("after up: pending = %v, %v; want false", pending, err)
	}
	var out bytes.Buffer
	if err := m.Status(ctx, &out); err != nil || !strings.Contains(out.String(), "applied") {
		t.Fatalf("status = %q, %v", out.String(), err)
	}
	// Every migration must undo cleanly and apply again.
	for range n {
		if err := m.Down(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n2, err := m.Up(ctx); err != nil || n2 != n {
		t.Fatalf("re-up = %d, %v; want %d", n2, err, n)
	}
}

func TestOpenFailsClearly(t *testing.T) {
	_, err := postgres.Open(context.Background(), "postgres://postgres@127.0.0.1:1/nope?sslmode=disable&connect_timeout=2")
	if err == nil || !strings.Contains(err.Error(), "connect to 127.0.0.1:1/nope") {
		t.Fatalf("err = %v, want it to name the server", err)
	}
}

func TestTemplateClonesAreIsolated(t *testing.T) {
	ctx := context.Background()
	a, b := pgtest.Pool(t), pgtest.Pool(t)
	if _, err := a.Exec(ctx, "CREATE TABLE only_in_a (x int)"); err != nil {
		t.Fatal(err)
	}
	var exists bool
	if err := b.QueryRow(ctx, "SELECT to_regclass('only_in_a') IS NOT NULL").Scan(&exists); err != nil || exists {
		t.Fatalf("table leaked between test databases: %v %v", exists, err)
	}
	var fn bool
	if err := b.QueryRow(ctx, "SELECT to_regproc('flock_set_updated_at') IS NOT NULL").Scan(&fn); err != nil || !fn {
		t.Fatalf("clone is not migrated: %v %v", fn, err)
	}
}
