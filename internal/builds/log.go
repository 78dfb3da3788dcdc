package builds

import (
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/blob"
)

// PlatformService names the platform's own lines in a build's log.
const PlatformService = "flock"

// Line is one line of a build's log.
type Line struct {
	Seq     int64
	TS      time.Time
	Service string
	Arch    string
	Text    string
}

// Format renders l as the log's text: `<time> <service>[/<arch>] | <text>`.
// Service and architecture names hold no spaces, slashes or bars, so Parse
// reads it back whatever the text holds.
func Format(l Line) string {
	var b strings.Builder
	b.Grow(len(l.Text) + 48)
	b.WriteString(l.TS.UTC().Format(time.RFC3339Nano))
	b.WriteByte(' ')
	b.WriteString(l.Service)
	if l.Arch != "" {
		b.WriteByte('/')
		b.WriteString(l.Arch)
	}
	b.WriteString(" | ")
	b.WriteString(l.Text)
	b.WriteByte('\n')
	return b.String()
}

// Parse reads a line Format wrote (without its newline); seq is its number.
func Parse(s string, seq int64) (Line, error) {
	ts, rest, ok := strings.Cut(s, " ")
	if !ok {
		return Line{}, fmt.Errorf("log line %d: no time", seq)
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return Line{}, fmt.Errorf("log line %d: %w", seq, err)
	}
	who, text, ok := strings.Cut(rest, " | ")
	if !ok {
		return Line{}, fmt.Errorf("log line %d: no separator", seq)
	}
	svc, arch, _ := strings.Cut(who, "/")
	return Line{Seq: seq, TS: t, Service: svc, Arch: arch, Text: text}, nil
}

// Append numbers lines after the build's last one and stores them. A log
// that reaches limit bytes (as text) keeps one more line saying so and
// drops everything after; an ended build's log takes nothing more.
func Append(ctx context.Context, pool *pgxpool.Pool, build uuid.UUID, limit int64, lines []Line) error {
	if len(lines) == 0 {
		return nil
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return AppendTx(ctx, db.New(tx), build, limit, lines) })
}

// AppendTx is Append in the caller's transaction.
func AppendTx(ctx context.Context, q *db.Queries, build uuid.UUID, limit int64, lines []Line) error {
	st, err := q.BuildLogState(ctx, build)
	if err != nil {
		return fmt.Errorf("lock the log of build %s: %w", build, err)
	}
	if st.Finished || st.LogTruncated {
		return nil
	}
	var (
		rows      []db.BuildLogInsertParams
		size      = st.LogBytes
		truncated bool
	)
	for _, l := range lines {
		// PostgreSQL keeps microseconds: counted as it will read back.
		l.TS = l.TS.Truncate(time.Microsecond)
		n := int64(len(Format(l)))
		if limit > 0 && size+n > limit {
			l = Line{TS: l.TS, Service: PlatformService,
				Text: fmt.Sprintf("log truncated: it reached the limit of %d bytes (FLOCK_BUILD_LOG_LIMIT); the build goes on", limit)}
			n = int64(len(Format(l)))
			truncated = true
		}
		size += n
		rows = append(rows, db.BuildLogInsertParams{BuildID: build, Seq: st.LogSeq + int64(len(rows)) + 1, Ts: l.TS,
			Service: l.Service, Architecture: l.Arch, Line: l.Text})
		if truncated {
			break
		}
	}
	if _, err := q.BuildLogReserve(ctx, db.BuildLogReserveParams{ID: build, N: int64(len(rows)), B: size - st.LogBytes, Truncated: truncated}); err != nil {
		return fmt.Errorf("number the log lines of build %s: %w", build, err)
	}
	if _, err := q.BuildLogInsert(ctx, rows); err != nil {
		return fmt.Errorf("store the log lines of build %s: %w", build, err)
	}
	return nil
}

// Lines calls fn with the build's lines after seq after, oldest first:
// from PostgreSQL while it runs, from the blob store once it ended.
func Lines(ctx context.Context, q *db.Queries, blobs *blob.Store, b db.Build, after int64, fn func(Line) error) error {
	if b.LogKey != nil {
		return storedLines(ctx, blobs, *b.LogKey, after, fn)
	}
	for {
		rows, err := q.BuildLogLines(ctx, db.BuildLogLinesParams{BuildID: b.ID, AfterSeq: after, MaxRows: 1000})
		if err != nil {
			return fmt.Errorf("read the log of build %s: %w", b.ID, err)
		}
		for _, r := range rows {
			if err := fn(Line{Seq: r.Seq, TS: r.Ts, Service: r.Service, Arch: r.Architecture, Text: r.Line}); err != nil {
				return err
			}
			after = r.Seq
		}
		if len(rows) < 1000 {
			return nil
		}
	}
}

func storedLines(ctx context.Context, blobs *blob.Store, key string, after int64, fn func(Line) error) error {
	rc, _, err := blobs.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("read stored log %s: %w", key, err)
	}
	defer rc.Close()
	zr, err := gzip.NewReader(rc)
	if err != nil {
		return fmt.Errorf("read stored log %s: %w", key, err)
	}
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var seq int64
	for sc.Scan() {
		seq++
		if seq <= after {
			continue
		}
		l, err := Parse(sc.Text(), seq)
		if err != nil {
			return fmt.Errorf("stored log %s: %w", key, err)
		}
		if err := fn(l); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read stored log %s: %w", key, err)
	}
	return nil
}

// Masker replaces secrets in log text with ***.
type Masker struct{ secrets []string }

// NewMasker masks each of secrets (empty ones and very short ones, which
// would mask ordinary words, are left out).
func NewMasker(secrets ...string) *Masker {
	m := &Masker{}
	for _, s := range secrets {
		if len(s) >= 4 {
			m.secrets = append(m.secrets, s)
		}
	}
	return m
}

// Mask returns s with every secret replaced. Where secrets overlap (one
// a prefix or part of another, or two sharing bytes) the whole stretch
// they cover is replaced, so no byte of either shows.
func (m *Masker) Mask(s string) string {
	if m == nil || len(m.secrets) == 0 {
		return s
	}
	type span struct{ from, to int }
	var spans []span
	for _, sec := range m.secrets {
		for i := 0; i < len(s); {
			j := strings.Index(s[i:], sec)
			if j < 0 {
				break
			}
			spans = append(spans, span{i + j, i + j + len(sec)})
			i += j + 1
		}
	}
	if len(spans) == 0 {
		return s
	}
	slices.SortFunc(spans, func(a, b span) int { return a.from - b.from })
	var b strings.Builder
	b.Grow(len(s))
	at := 0 // s[:at] is written
	for k := 0; k < len(spans); {
		cur := spans[k]
		for k++; k < len(spans) && spans[k].from < cur.to; k++ {
			cur.to = max(cur.to, spans[k].to)
		}
		b.WriteString(s[at:cur.from])
		b.WriteString("***")
		at = cur.to
	}
	b.WriteString(s[at:])
	return b.String()
}
