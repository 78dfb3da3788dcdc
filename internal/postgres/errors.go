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

// IsForeignKeyViolation reports a foreign_key_violation.
func IsForeignKeyViolation(err error) bool { return sqlState(err) == "23503" }

// IsCheckViolation reports a check_violation.
func IsCheckViolation(err error) bool { return sqlState(err) == "23514" }
