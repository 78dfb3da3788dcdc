// Package pgerr names the PostgreSQL errors handlers turn into client errors.
package pgerr

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

func code(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// IsUnique reports a unique_violation.
func IsUnique(err error) bool { return code(err) == "23505" }

// IsForeignKey reports a foreign_key_violation.
func IsForeignKey(err error) bool { return code(err) == "23503" }

// IsCheck reports a check_violation.
func IsCheck(err error) bool { return code(err) == "23514" }
