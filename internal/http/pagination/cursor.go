// Package pagination encodes keyset cursors: the sort key of the last item of
// a page, opaque to clients, so pages stay stable while rows are added.
package pagination

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/http/problem"
)

// DefaultLimit is the page size when the client gives none.
const DefaultLimit = 50

type cursor struct {
	T  time.Time `json:"t"`
	ID uuid.UUID `json:"i"`
}

// Encode returns the cursor that continues after (t, id).
func Encode(t time.Time, id uuid.UUID) string {
	b, _ := json.Marshal(cursor{T: t.UTC(), ID: id})
	return base64.RawURLEncoding.EncodeToString(b)
}

// Decode parses a cursor from a query parameter; a nil or empty one means the
// first page. A bad one is the client's error.
func Decode(s *string) (*time.Time, uuid.NullUUID, error) {
	if s == nil || *s == "" {
		return nil, uuid.NullUUID{}, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(*s)
	if err == nil && bytes.IndexByte(b, 0) >= 0 {
		// No cursor this API hands out holds one, and whatever reads a
		// crafted cursor must never pass one on to PostgreSQL.
		err = errNUL
	}
	var c cursor
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil || c.T.IsZero() {
		return nil, uuid.NullUUID{}, BadCursor(*s)
	}
	return &c.T, uuid.NullUUID{UUID: c.ID, Valid: true}, nil
}

var errNUL = errors.New("cursor holds a NUL byte")

// textSep separates the parts of a text cursor. NUL cannot occur in a part:
// PostgreSQL text holds none, and the API refuses it in every input.
const textSep = "\x00"

// EncodeText returns the cursor that continues after a sort key of text
// columns (a variable's service and name).
func EncodeText(parts ...string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strings.Join(parts, textSep)))
}

// DecodeText parses a cursor of EncodeText with n parts; a nil or empty one
// means the first page (nil parts). A cursor with another number of parts,
// or with a part PostgreSQL would refuse as text (invalid UTF-8), is the
// client's error, never a query.
func DecodeText(s *string, n int) ([]string, error) {
	if s == nil || *s == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(*s)
	parts := strings.Split(string(b), textSep)
	if err != nil || len(parts) != n || !utf8.Valid(b) {
		return nil, BadCursor(*s)
	}
	return parts, nil
}

// BadCursor is the 400 for a cursor this API did not hand out.
func BadCursor(c string) *problem.Error {
	return &problem.Error{Status: http.StatusBadRequest, Code: "validation_failed",
		Detail: "cursor is not one this API returned",
		Errors: []problem.FieldError{{In: "query", Field: "cursor", Detail: fmt.Sprintf("unrecognised cursor %q", c)}}}
}

// Limit returns the requested page size or the default.
func Limit(l *int) int32 {
	if l == nil {
		return DefaultLimit
	}
	return int32(*l)
}

// Page turns the rows of a query that fetched limit+1 into one page: at most
// limit items, converted, and the cursor of the next page when there is one.
func Page[R, T any](rows []R, limit int32, key func(R) (time.Time, uuid.UUID), conv func(R) (T, error)) ([]T, *string, error) {
	var next *string
	if len(rows) > int(limit) {
		rows = rows[:limit]
		t, id := key(rows[len(rows)-1])
		c := Encode(t, id)
		next = &c
	}
	items := make([]T, 0, len(rows))
	for _, r := range rows {
		item, err := conv(r)
		if err != nil {
			return nil, nil, err
		}
		items = append(items, item)
	}
	return items, next, nil
}

// Plain adapts a conversion that cannot fail for Page.
func Plain[R, T any](f func(R) T) func(R) (T, error) {
	return func(r R) (T, error) { return f(r), nil }
}
