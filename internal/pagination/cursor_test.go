package pagination_test

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/pagination"
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
