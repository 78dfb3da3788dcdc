package builds

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

// newBuild makes a fresh database holding an org, a fleet, a draft
// release and a queued build of it.
func newBuild(t *testing.T) (*pgxpool.Pool, uuid.UUID) {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtest.URL(t))
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close) // registered after URL's cleanup: runs before the drop
	var org, fleet, release, build uuid.UUID
	if err := pool.QueryRow(ctx, `INSERT INTO orgs (name) VALUES ('Acme') RETURNING id`).Scan(&org); err != nil {
		t.Fatalf("insert org: %v", err)
	}
	if err := pool.QueryRow(ctx, `INSERT INTO fleets (org_id, name, architecture) VALUES ($1, 'Kiosks', 'amd64') RETURNING id`,
		org).Scan(&fleet); err != nil {
		t.Fatalf("insert fleet: %v", err)
	}
	if err := pool.QueryRow(ctx, `INSERT INTO releases (org_id, fleet_id, status, services) VALUES ($1, $2, 'draft', '[]') RETURNING id`,
		org, fleet).Scan(&release); err != nil {
		t.Fatalf("insert release: %v", err)
	}
	if err := pool.QueryRow(ctx, `INSERT INTO builds (org_id, fleet_id, release_id, architectures, services, source_key, source_bytes)
		VALUES ($1, $2, $3, '{amd64}', '[]', 'x', 0) RETURNING id`, org, fleet, release).Scan(&build); err != nil {
		t.Fatalf("insert build: %v", err)
	}
	return pool, build
}

type logState struct {
	seq       int64
	bytes     int64
	truncated bool
}

func stateOf(t *testing.T, pool *pgxpool.Pool, build uuid.UUID) logState {
	t.Helper()
	var s logState
	if err := pool.QueryRow(context.Background(), `SELECT log_seq, log_bytes, log_truncated FROM builds WHERE id = $1`, build).
		Scan(&s.seq, &s.bytes, &s.truncated); err != nil {
		t.Fatalf("read build: %v", err)
	}
	return s
}

func allLines(t *testing.T, pool *pgxpool.Pool, build uuid.UUID, after int64) []Line {
	t.Helper()
	var out []Line
	if err := Lines(context.Background(), db.New(pool), nil, db.Build{ID: build}, after, func(l Line) error {
		out = append(out, l)
		return nil
	}); err != nil {
		t.Fatalf("Lines(after %d): %v", after, err)
	}
	return out
}

// base is a time PostgreSQL keeps exactly (microseconds).
var base = time.Date(2024, 5, 6, 7, 8, 9, 123456000, time.UTC)

func mkLines(service, arch string, from, n int) []Line {
	out := make([]Line, n)
	for i := range out {
		out[i] = Line{TS: base.Add(time.Duration(from+i) * time.Millisecond), Service: service, Arch: arch,
			Text: fmt.Sprintf("line %d | of %s/%s ✓", from+i, service, arch)}
	}
	return out
}

func sizeOf(lines []Line) int64 {
	var n int64
	for _, l := range lines {
		n += int64(len(Format(l)))
	}
	return n
}

// checkSeqs fails unless lines are numbered 1..len(lines) in order.
func checkSeqs(t *testing.T, lines []Line) {
	t.Helper()
	for i, l := range lines {
		if l.Seq != int64(i+1) {
			t.Fatalf("line %d has seq %d, want %d", i, l.Seq, i+1)
		}
	}
}

func sameLine(a, b Line) bool {
	return a.TS.Equal(b.TS) && a.Service == b.Service && a.Arch == b.Arch && a.Text == b.Text
}

func TestAppendNumbersAcrossCalls(t *testing.T) {
	pool, build := newBuild(t)
	ctx := context.Background()
	var want []Line
	for i, batch := range [][]Line{
		mkLines(PlatformService, "", 0, 1),
		mkLines("web", "amd64", 1, 5),
		nil, // no lines: nothing happens
		mkLines("api", "arm64", 6, 3),
		mkLines("web", "amd64", 9, 1),
	} {
		if err := Append(ctx, pool, build, 0, batch); err != nil {
			t.Fatalf("Append batch %d: %v", i, err)
		}
		want = append(want, batch...)
	}
	got := allLines(t, pool, build, 0)
	if len(got) != len(want) {
		t.Fatalf("got %d lines, want %d", len(got), len(want))
	}
	checkSeqs(t, got)
	for i := range want {
		if !sameLine(got[i], want[i]) {
			t.Fatalf("line %d = %+v, want %+v", i+1, got[i], want[i])
		}
	}
	st := stateOf(t, pool, build)
	if want := (logState{seq: int64(len(want)), bytes: sizeOf(want)}); st != want {
		t.Fatalf("builds row log state = %+v, want %+v", st, want)
	}
}

// log_bytes is the size of the log as text: of the lines Lines gives back
// (and the stored log is made of), whatever precision the caller's times
// have.
func TestAppendBytesMatchStoredText(t *testing.T) {
	pool, build := newBuild(t)
	lines := []Line{
		{TS: time.Now(), Service: "web", Arch: "amd64", Text: "now"},
		{TS: time.Date(2024, 1, 2, 3, 4, 5, 123456789, time.UTC), Service: "web", Text: "nanoseconds"},
		{TS: time.Date(2024, 1, 2, 3, 4, 5, 999999999, time.UTC), Service: "web", Text: "almost a second"},
		{TS: time.Date(2024, 1, 2, 3, 4, 5, 100, time.UTC), Service: "web", Text: "below a microsecond"},
	}
	if err := Append(context.Background(), pool, build, 0, lines); err != nil {
		t.Fatal(err)
	}
	got := allLines(t, pool, build, 0)
	if st := stateOf(t, pool, build); st.bytes != sizeOf(got) {
		t.Fatalf("log_bytes = %d, but the log's text is %d bytes", st.bytes, sizeOf(got))
	}
}

func TestAppendTruncates(t *testing.T) {
	first := mkLines("web", "amd64", 0, 10)
	one := int64(len(Format(first[0]))) // every line of mkLines(…, 0..9) has this size
	for _, l := range first {
		if int64(len(Format(l))) != one {
			t.Fatalf("test lines differ in size")
		}
	}
	tests := []struct {
		name    string
		limit   int64
		batches [][]Line
		keep    int // lines kept before the notice
	}{
		{"limit inside one batch", 3*one + one/2, [][]Line{first}, 3},
		{"limit exactly at a line's end", 3 * one, [][]Line{first}, 3},
		{"limit reached by a later batch", 4*one + 1, [][]Line{first[:2], first[2:5], first[5:]}, 4},
		{"limit at a batch's end", 2 * one, [][]Line{first[:2], first[2:]}, 2},
		{"first line too big", one - 1, [][]Line{first}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool, build := newBuild(t)
			ctx := context.Background()
			for i, b := range tt.batches {
				if err := Append(ctx, pool, build, tt.limit, b); err != nil {
					t.Fatalf("Append batch %d: %v", i, err)
				}
			}
			// Later appends add nothing, however small.
			if err := Append(ctx, pool, build, tt.limit, []Line{{TS: base, Service: "web", Text: "x"}}); err != nil {
				t.Fatalf("Append after truncation: %v", err)
			}
			if err := Append(ctx, pool, build, 1<<40, mkLines("api", "", 20, 3)); err != nil {
				t.Fatalf("Append after truncation, larger limit: %v", err)
			}
			got := allLines(t, pool, build, 0)
			if len(got) != tt.keep+1 {
				t.Fatalf("got %d lines, want %d kept and the notice: %+v", len(got), tt.keep, got)
			}
			checkSeqs(t, got)
			for i := 0; i < tt.keep; i++ {
				if !sameLine(got[i], first[i]) {
					t.Fatalf("line %d = %+v, want %+v", i+1, got[i], first[i])
				}
			}
			if int64(tt.keep)*one > tt.limit {
				t.Fatalf("kept %d bytes over the limit of %d", int64(tt.keep)*one, tt.limit)
			}
			var notices int
			for _, l := range got {
				if l.Service == PlatformService {
					notices++
				}
			}
			n := got[tt.keep]
			if notices != 1 || n.Service != PlatformService || n.Arch != "" || !strings.Contains(n.Text, "truncated") ||
				!strings.Contains(n.Text, fmt.Sprint(tt.limit)) {
				t.Fatalf("want exactly one notice from %q, last: %+v", PlatformService, n)
			}
			st := stateOf(t, pool, build)
			if want := (logState{seq: int64(len(got)), bytes: sizeOf(got), truncated: true}); st != want {
				t.Fatalf("builds row log state = %+v, want %+v", st, want)
			}
		})
	}
}

func TestAppendUnderLimitNotTruncated(t *testing.T) {
	pool, build := newBuild(t)
	lines := mkLines("web", "amd64", 0, 10)
	if err := Append(context.Background(), pool, build, sizeOf(lines), lines); err != nil {
		t.Fatal(err)
	}
	st := stateOf(t, pool, build)
	if want := (logState{seq: 10, bytes: sizeOf(lines)}); st != want {
		t.Fatalf("log state = %+v, want %+v", st, want)
	}
}

func TestAppendEndedBuild(t *testing.T) {
	pool, build := newBuild(t)
	ctx := context.Background()
	before := mkLines("web", "amd64", 0, 3)
	if err := Append(ctx, pool, build, 0, before); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE builds SET status = 'failed', finished_at = now() WHERE id = $1`, build); err != nil {
		t.Fatal(err)
	}
	if err := Append(ctx, pool, build, 0, mkLines("web", "amd64", 3, 4)); err != nil {
		t.Fatalf("Append to an ended build: %v", err)
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return AppendTx(ctx, db.New(tx), build, 0, mkLines("web", "amd64", 7, 1))
	}); err != nil {
		t.Fatalf("AppendTx to an ended build: %v", err)
	}
	got := allLines(t, pool, build, 0)
	if len(got) != 3 {
		t.Fatalf("ended build has %d lines, want 3", len(got))
	}
	if st := stateOf(t, pool, build); st != (logState{seq: 3, bytes: sizeOf(before)}) {
		t.Fatalf("log state = %+v", st)
	}
}

func TestAppendUnknownBuild(t *testing.T) {
	pool, _ := newBuild(t)
	err := Append(context.Background(), pool, uuid.New(), 0, mkLines("web", "", 0, 1))
	if !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("Append to a missing build: %v, want no rows", err)
	}
}

// AppendTx takes part in the caller's transaction: rolled back, nothing
// stays; committed, its lines follow the others.
func TestAppendTx(t *testing.T) {
	pool, build := newBuild(t)
	ctx := context.Background()
	boom := errors.New("boom")
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := AppendTx(ctx, db.New(tx), build, 0, mkLines("web", "", 0, 2)); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("transaction: %v", err)
	}
	if st := stateOf(t, pool, build); st != (logState{}) {
		t.Fatalf("log state after rollback = %+v", st)
	}
	if n := len(allLines(t, pool, build, 0)); n != 0 {
		t.Fatalf("%d lines after rollback", n)
	}
	want := append(mkLines("web", "", 0, 2), mkLines("api", "arm64", 2, 2)...)
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		if err := AppendTx(ctx, q, build, 0, want[:2]); err != nil {
			return err
		}
		return AppendTx(ctx, q, build, 0, want[2:])
	}); err != nil {
		t.Fatal(err)
	}
	got := allLines(t, pool, build, 0)
	checkSeqs(t, got)
	if len(got) != 4 || !sameLine(got[3], want[3]) {
		t.Fatalf("got %+v", got)
	}
	if st := stateOf(t, pool, build); st != (logState{seq: 4, bytes: sizeOf(want)}) {
		t.Fatalf("log state = %+v", st)
	}
}

func TestLinesAfter(t *testing.T) {
	pool, build := newBuild(t)
	ctx := context.Background()
	// More than one page of BuildLogLines (1000 rows).
	want := mkLines("web", "amd64", 0, 2345)
	for i := 0; i < len(want); i += 500 {
		if err := Append(ctx, pool, build, 0, want[i:min(i+500, len(want))]); err != nil {
			t.Fatal(err)
		}
	}
	for _, after := range []int64{0, 1, 7, 999, 1000, 1001, 2000, 2344, 2345, 5000} {
		got := allLines(t, pool, build, after)
		n := max(0, int64(len(want))-after)
		if int64(len(got)) != n {
			t.Fatalf("after %d: %d lines, want %d", after, len(got), n)
		}
		for i, l := range got {
			if l.Seq != after+int64(i)+1 || !sameLine(l, want[after+int64(i)]) {
				t.Fatalf("after %d: line %d = %+v, want seq %d %+v", after, i, l, after+int64(i)+1, want[after+int64(i)])
			}
		}
	}
	// fn's error stops the walk and comes back as is.
	stop := errors.New("stop")
	var calls int
	err := Lines(ctx, db.New(pool), nil, db.Build{ID: build}, 10, func(Line) error {
		calls++
		if calls == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || calls != 3 {
		t.Fatalf("Lines = %v after %d calls, want stop after 3", err, calls)
	}
}

func TestAppendConcurrent(t *testing.T) {
	pool, build := newBuild(t)
	ctx := context.Background()
	const workers, perWorker, batch = 8, 50, 5
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lines := mkLines(fmt.Sprintf("svc%d", w), "amd64", 0, perWorker)
			for i := 0; i < perWorker; i += batch {
				if err := Append(ctx, pool, build, 0, lines[i:i+batch]); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("worker %d, lines %d..: %w", w, i, err))
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	got := allLines(t, pool, build, 0)
	if len(got) != workers*perWorker {
		t.Fatalf("got %d lines, want %d", len(got), workers*perWorker)
	}
	checkSeqs(t, got)
	// Each worker's lines are all there, in its order.
	next := map[string]int{}
	var size int64
	for _, l := range got {
		want := fmt.Sprintf("line %d | of %s/amd64 ✓", next[l.Service], l.Service)
		if l.Text != want {
			t.Fatalf("seq %d: %q, want %q", l.Seq, l.Text, want)
		}
		next[l.Service]++
		size += int64(len(Format(l)))
	}
	for w := range workers {
		if n := next[fmt.Sprintf("svc%d", w)]; n != perWorker {
			t.Fatalf("worker %d has %d lines", w, n)
		}
	}
	if st := stateOf(t, pool, build); st != (logState{seq: workers * perWorker, bytes: size}) {
		t.Fatalf("log state = %+v, want seq %d bytes %d", st, workers*perWorker, size)
	}
}

// Concurrent appends under a limit still leave exactly one notice.
func TestAppendConcurrentTruncation(t *testing.T) {
	pool, build := newBuild(t)
	ctx := context.Background()
	one := int64(len(Format(mkLines("svc0", "amd64", 0, 1)[0])))
	limit := 37*one + one/2
	const workers, perWorker = 8, 20
	errc := make(chan error, workers*perWorker)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, l := range mkLines(fmt.Sprintf("svc%d", w), "amd64", 0, perWorker) {
				if err := Append(ctx, pool, build, limit, []Line{l}); err != nil {
					errc <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	got := allLines(t, pool, build, 0)
	checkSeqs(t, got)
	if len(got) != 38 {
		t.Fatalf("got %d lines, want 37 and the notice", len(got))
	}
	for i, l := range got {
		if (l.Service == PlatformService) != (i == 37) {
			t.Fatalf("line %d: %+v", i+1, l)
		}
	}
	if st := stateOf(t, pool, build); st != (logState{seq: 38, bytes: sizeOf(got), truncated: true}) {
		t.Fatalf("log state = %+v", st)
	}
}
