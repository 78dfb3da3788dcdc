package migrations_test

import (
	"io/fs"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/flock-io/flock-api/migrations"
)

// firstByAggregate is the first migration named after its aggregate; the
// ones before it predate the rule.
const firstByAggregate = 7

var (
	fileName = regexp.MustCompile(`^(\d{5})_([a-z][a-z0-9_]*)\.sql$`)
	tables   = regexp.MustCompile(`(?i)\b(?:CREATE TABLE(?: IF NOT EXISTS)?|ALTER TABLE|ON)\s+([a-z_][a-z0-9_]*)`)
)

// Every migration is NNNNN_description.sql, numbered without gaps, and from
// firstByAggregate on its description starts with a table its Up section
// creates or changes.
func TestMigrationsAreNamedByAggregate(t *testing.T) {
	entries, err := fs.ReadDir(migrations.FS, ".")
	if err != nil {
		t.Fatal(err)
	}
	want := 1
	for _, e := range entries {
		m := fileName.FindStringSubmatch(e.Name())
		if m == nil {
			t.Errorf("%s: want NNNNN_lowercase_description.sql", e.Name())
			continue
		}
		n, _ := strconv.Atoi(m[1])
		if n != want {
			t.Errorf("%s: number %d, want %d (no gaps, no repeats)", e.Name(), n, want)
		}
		want = n + 1
		if n < firstByAggregate {
			continue
		}
		body, err := fs.ReadFile(migrations.FS, e.Name())
		if err != nil {
			t.Fatal(err)
		}
		up, _, _ := strings.Cut(string(body), "-- +goose Down")
		var touched []string
		for _, tm := range tables.FindAllStringSubmatch(up, -1) {
			touched = append(touched, strings.ToLower(tm[1]))
		}
		ok := false
		for _, table := range touched {
			if m[2] == table || strings.HasPrefix(m[2], table+"_") {
				ok = true
			}
		}
		if !ok {
			t.Errorf("%s: name it after the aggregate it changes (one of %v)", e.Name(), touched)
		}
	}
}
