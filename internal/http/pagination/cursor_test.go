package pagination_test

import (
	"encoding/base64"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/http/pagination"
	"github.com/flock-io/flock-api/internal/http/problem"
)

type row struct {
	t  time.Time
	id uuid.UUID
}

func TestPage(t *testing.T) {
	base := time.Date(2026, 11, 27, 8, 0, 0, 123456000, time.UTC)
	rows := make([]row, 5)
	for i := range rows {
		rows[i] = row{base.Add(time.Duration(i) * time.Second), uuid.New()}
	}
	key := func(r row) (time.Time, uuid.UUID) { return r.t, r.id }
	conv := pagination.Plain(func(r row) uuid.UUID { return r.id })
	for _, tt := range []struct {
		name     string
		rows     []row
		limit    int32
		wantLen  int
		wantNext bool
	}{
		{"more than a page", rows, 4, 4, true},
		{"exactly a page", rows[:4], 4, 4, false},
		{"short page", rows[:2], 4, 2, false},
		{"empty", nil, 4, 0, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			items, next, err := pagination.Page(tt.rows, tt.limit, key, conv)
			if err != nil || len(items) != tt.wantLen || (next != nil) != tt.wantNext {
				t.Fatalf("items %d next %v err %v", len(items), next, err)
			}
			if next == nil {
				return
			}
			// The cursor names the last row of the page, to the microsecond.
			at, id, err := pagination.Decode(next)
			last := tt.rows[tt.limit-1]
			if err != nil || !at.Equal(last.t) || id.UUID != last.id {
				t.Fatalf("cursor decodes to %v %v %v, want %v %v", at, id, err, last.t, last.id)
			}
		})
	}
}

func TestDecodeRejectsForeignCursors(t *testing.T) {
	for _, c := range []string{"bogus", "e30", "eyJ0IjoiMjAyNiJ9"} {
		if _, _, err := pagination.Decode(&c); err == nil {
			t.Errorf("Decode(%q) accepted", c)
		}
	}
	if at, id, err := pagination.Decode(nil); at != nil || id.Valid || err != nil {
		t.Error("a missing cursor is the first page")
	}
}

// A cursor whose bytes hold NUL is refused as a cursor, naming the
// parameter: whatever reads it must never hand PostgreSQL a NUL.
func TestDecodeRefusesNUL(t *testing.T) {
	id := uuid.New()
	good := pagination.Encode(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), id)
	if _, _, err := pagination.Decode(&good); err != nil {
		t.Fatalf("Decode(a cursor it encoded) = %v", err)
	}
	for _, raw := range []string{
		`{"t":"2026-01-01T00:00:00Z","i":"` + id.String() + `"}` + "\x00",
		"\x00" + `{"t":"2026-01-01T00:00:00Z","i":"` + id.String() + `"}`,
	} {
		c := base64.RawURLEncoding.EncodeToString([]byte(raw))
		_, _, err := pagination.Decode(&c)
		assertBadCursor(t, c, err)
	}
}

func TestTextCursor(t *testing.T) {
	c := pagination.EncodeText("", "LEVEL")
	parts, err := pagination.DecodeText(&c, 2)
	if err != nil || len(parts) != 2 || parts[0] != "" || parts[1] != "LEVEL" {
		t.Fatalf("DecodeText(EncodeText(\"\", LEVEL)) = %q, %v", parts, err)
	}
	if parts, err := pagination.DecodeText(nil, 2); parts != nil || err != nil {
		t.Errorf("a missing cursor is the first page, got %q %v", parts, err)
	}
	empty := ""
	if parts, err := pagination.DecodeText(&empty, 2); parts != nil || err != nil {
		t.Errorf("an empty cursor is the first page, got %q %v", parts, err)
	}
	for name, raw := range map[string]string{
		"NUL inside a part": "svc\x00LEV\x00EL",
		"one part only":     "LEVEL",
		"invalid UTF-8":     "svc\x00LEV\xffEL",
	} {
		t.Run(name, func(t *testing.T) {
			c := base64.RawURLEncoding.EncodeToString([]byte(raw))
			_, err := pagination.DecodeText(&c, 2)
			assertBadCursor(t, c, err)
		})
	}
	notBase64 := "not base64!"
	_, err = pagination.DecodeText(&notBase64, 2)
	assertBadCursor(t, notBase64, err)
}

func assertBadCursor(t *testing.T, c string, err error) {
	t.Helper()
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Status != http.StatusBadRequest || pe.Code != "validation_failed" ||
		len(pe.Errors) != 1 || pe.Errors[0].In != "query" || pe.Errors[0].Field != "cursor" {
		t.Errorf("cursor %q: err = %v, want 400 validation_failed naming query cursor", c, err)
	}
}
