// Package benchdb gives a benchmark program a database of its own on a
// PostgreSQL server, dropped when it is done.
package benchdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/internal/postgres"
)

// Create makes an empty database on the server of adminURL and returns its
// URL and a function that drops it.
func Create(ctx context.Context, adminURL string) (string, func(), error) {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", nil, fmt.Errorf("connect to %s: %w", adminURL, err)
	}
	defer conn.Close(ctx)
	raw := make([]byte, 6)
	_, _ = rand.Read(raw)
	name := "flock_bench_" + hex.EncodeToString(raw)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, fmt.Errorf("create database %s: %w", name, err)
	}
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", nil, err
	}
	u.Path = "/" + name
	return u.String(), func() {
		c, err := pgx.Connect(context.Background(), adminURL)
		if err == nil {
			_, _ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			c.Close(context.Background())
		}
	}, nil
}

// Migrated is Create with flock-api's migrations applied, and a pool on it:
// the database flock-api runs on. done closes the pool and drops the
// database.
func Migrated(ctx context.Context, adminURL string) (dbURL string, pool *pgxpool.Pool, done func(), err error) {
	dbURL, drop, err := Create(ctx, adminURL)
	if err != nil {
		return "", nil, nil, err
	}
	pool, err = postgres.Open(ctx, dbURL)
	if err != nil {
		drop()
		return "", nil, nil, err
	}
	done = func() { pool.Close(); drop() }
	m, err := postgres.NewMigrator(pool, nil)
	if err != nil {
		done()
		return "", nil, nil, err
	}
	defer m.Close()
	if _, err := m.Up(ctx); err != nil {
		done()
		return "", nil, nil, fmt.Errorf("migrate %s: %w", dbURL, err)
	}
	return dbURL, pool, done, nil
}
