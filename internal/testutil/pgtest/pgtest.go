// Package pgtest gives each test its own PostgreSQL database, cloned from a
// template that holds every migration. Cloning takes milliseconds, so tests
// and packages run in parallel without sharing rows, and each database is
// dropped when its test ends.
package pgtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/migrations"
)

// AdminURL is the server the helper creates databases on. Set
// FLOCK_TEST_DATABASE_URL to use another server; its database part is ignored.
func AdminURL() string {
	if u := os.Getenv("FLOCK_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

var (
	templateOnce sync.Once
	templateName string
	templateErr  error
)

// URL creates a fresh migrated database and returns its URL; the database is
// dropped at the end of the test.
func URL(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	templateOnce.Do(func() { templateName, templateErr = ensureTemplate(ctx) })
	if templateErr != nil {
		t.Fatalf("pgtest: prepare template database: %v", templateErr)
	}
	name := "flock_test_" + randHex(8)
	if err := admin(ctx, func(c *pgx.Conn) error {
		return createFromTemplate(ctx, c, name, templateName)
	}); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		if err := admin(context.Background(), func(c *pgx.Conn) error {
			_, err := c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			return err
		}); err != nil {
			t.Errorf("pgtest: drop database %s: %v", name, err)
		}
	})
	return withDatabase(AdminURL(), name)
}

// Pool is URL plus an open pool, closed at the end of the test.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	// Opened as the server opens its pool, with the same type registrations.
	pool, err := postgres.Open(context.Background(), URL(t))
	if err != nil {
		t.Fatalf("pgtest: open pool: %v", err)
	}
	// Registered after URL's cleanup, so it runs first: close, then drop.
	t.Cleanup(pool.Close)
	return pool
}

// EmptyURL creates a fresh database with no migrations applied.
func EmptyURL(t testing.TB) string {
	t.Helper()
	ctx := context.Background()
	name := "flock_test_" + randHex(8)
	if err := admin(ctx, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
		return err
	}); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		_ = admin(context.Background(), func(c *pgx.Conn) error {
			_, err := c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
			return err
		})
	})
	return withDatabase(AdminURL(), name)
}

// ensureTemplate builds the template for the current migrations once per
// server: its name carries a hash of the migration files, and an advisory
// lock keeps parallel test processes from building it twice.
func ensureTemplate(ctx context.Context) (string, error) {
	sum, err := migrationsHash()
	if err != nil {
		return "", err
	}
	name := "flock_tmpl_" + sum
	building := name + "_building"
	err = admin(ctx, func(c *pgx.Conn) error {
		h := fnv.New64a()
		h.Write([]byte("flock-pgtest-template"))
		key := int64(h.Sum64())
		if _, err := c.Exec(ctx, "SELECT pg_advisory_lock($1)", key); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		defer c.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", key) //nolint:errcheck

		var exists bool
		if err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
			return err
		}
		if exists {
			return nil
		}
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{building}.Sanitize()+" WITH (FORCE)"); err != nil {
			return err
		}
		if _, err := c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{building}.Sanitize()); err != nil {
			return err
		}
		if err := migrate(ctx, withDatabase(AdminURL(), building)); err != nil {
			return err
		}
		// Built under another name and renamed, so a crash never leaves a
		// half-migrated template behind.
		_, err := c.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{building}.Sanitize()+" RENAME TO "+pgx.Identifier{name}.Sanitize())
		if err != nil {
			return err
		}
		dropStaleTemplates(ctx, c, name)
		return nil
	})
	return name, err
}

// dropStaleTemplates removes templates of older migration sets; one in use
// by another run refuses to drop, which is fine.
func dropStaleTemplates(ctx context.Context, c *pgx.Conn, keep string) {
	rows, err := c.Query(ctx, "SELECT datname FROM pg_database WHERE datname LIKE 'flock_tmpl_%' AND datname <> $1", keep)
	if err != nil {
		return
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return
	}
	for _, n := range names {
		_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{n}.Sanitize())
	}
}

func migrate(ctx context.Context, url string) error {
	pool, err := postgres.Open(ctx, url)
	if err != nil {
		return err
	}
	defer pool.Close()
	m, err := postgres.NewMigrator(pool, nil)
	if err != nil {
		return err
	}
	defer m.Close()
	_, err = m.Up(ctx)
	return err
}

// createFromTemplate retries while another backend briefly holds the
// template (PostgreSQL refuses to copy a database with other sessions).
func createFromTemplate(ctx context.Context, c *pgx.Conn, name, tmpl string) error {
	var err error
	for range 50 {
		_, err = c.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE "+pgx.Identifier{tmpl}.Sanitize())
		if err == nil || !strings.Contains(err.Error(), "being accessed by other users") {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

func admin(ctx context.Context, fn func(*pgx.Conn) error) error {
	c, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		return fmt.Errorf("connect to %s (set FLOCK_TEST_DATABASE_URL, or run make services): %w", redacted(AdminURL()), err)
	}
	defer c.Close(context.WithoutCancel(ctx))
	return fn(c)
}

func migrationsHash() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(migrations.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(migrations.FS, path)
		if err != nil {
			return err
		}
		h.Write([]byte(path))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("hash migrations: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func withDatabase(base, db string) string {
	u, err := url.Parse(base)
	if err != nil {
		panic(fmt.Sprintf("pgtest: bad admin url: %v", err))
	}
	u.Path = "/" + db
	return u.String()
}

func redacted(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "the test database"
	}
	return u.Redacted()
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
