package postgres

// The PostgreSQL errors handlers turn into client errors.

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// IsUniqueViolation reports a unique_violation.
func IsUniqueViolation(err error) bool { return sqlState(err) == "23505" }

// UniqueViolationOf names the constraint a unique_violation broke, or is
// empty when err is not one.
func UniqueViolationOf(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return pgErr.ConstraintName
	}
	return ""
}

// IsForeignKeyViolation reports a foreign_key_violation.
func IsForeignKeyViolation(err error) bool { return sqlState(err) == "23503" }

// IsCheckViolation reports a check_violation.
func IsCheckViolation(err error) bool { return sqlState(err) == "23514" }
