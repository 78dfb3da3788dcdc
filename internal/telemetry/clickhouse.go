package telemetry

import (
	"context"
	_ "embed"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"
)

//go:embed clickhouse.sql
var clickhouseSchema string

// ClickHouse is the production store: the tables of clickhouse.sql, reached
// over the native protocol (Debian's ClickHouse 18.16 speaks nothing newer
// that clickhouse-go accepts).
//
// Logs and connectivity live in ReplacingMergeTree tables sorted by their
// natural key. A merge keeps one row per key, but merges happen when the
// server likes, so every read of those tables uses FINAL: a redelivery is
// never visible, merged or not. Times are stored as Int64 microseconds
// because 18.16 has no DateTime64.
//
// A batch is one INSERT. ClickHouse writes an INSERT of one block atomically
// per partition (day), so a batch that spans days may, if the server fails
// mid-way, be stored in part; writing it again is harmless for logs and
// connectivity.
type ClickHouse struct {
	conn driver.Conn
	db   string
}

var _ Store = (*ClickHouse)(nil)

// dayMicros is one partition of every table: PARTITION BY intDiv(t, dayMicros).
const dayMicros = int64(24 * time.Hour / time.Microsecond)

// NewClickHouse connects to url (clickhouse://host:9000/database, the
// database being "default" when the path is empty) and creates the database
// and its tables when they are missing.
func NewClickHouse(ctx context.Context, url string) (*ClickHouse, error) {
	opts, err := clickhouse.ParseDSN(url)
	if err != nil {
		return nil, fmt.Errorf("parse ClickHouse URL: %w", err)
	}
	db := opts.Auth.Database
	if db == "" {
		db = "default"
	}
	// The server refuses a session whose database does not exist yet, so the
	// first connection creates it from the default one.
	opts.Auth.Database = ""
	admin, err := clickhouse.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open ClickHouse: %w", err)
	}
	err = admin.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+quoteIdent(db))
	admin.Close()
	if err != nil {
		return nil, fmt.Errorf("create ClickHouse database %s: %w", db, err)
	}

	opts.Auth.Database = db
	conn, err := clickhouse.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open ClickHouse database %s: %w", db, err)
	}
	for _, stmt := range strings.Split(clickhouseSchema, ";") {
		if strings.TrimSpace(stripComments(stmt)) == "" {
			continue
		}
		if err := conn.Exec(ctx, stmt); err != nil {
			conn.Close()
			return nil, fmt.Errorf("create ClickHouse tables in %s: %w", db, err)
		}
	}
	return &ClickHouse{conn: conn, db: db}, nil
}

// Close closes the connections.
func (c *ClickHouse) Close() error {
	return c.conn.Close()
}

// WriteSamples implements Store.
func (c *ClickHouse) WriteSamples(ctx context.Context, s []Sample) error {
	if len(s) == 0 {
		return nil
	}
	err := c.insert(ctx, "INSERT INTO telemetry_samples (device_id, org_id, ts_us, name, value, unit, label_keys, label_values)",
		func(b driver.Batch) error {
			for _, x := range s {
				keys, values := splitLabels(x.Labels)
				if err := b.Append(x.DeviceID, x.OrgID, x.TS.UnixMicro(), x.Name, x.Value, x.Unit, keys, values); err != nil {
					return fmt.Errorf("sample %s of device %s: %w", x.Name, x.DeviceID, err)
				}
			}
			return nil
		})
	if err != nil {
		return fmt.Errorf("write %d telemetry samples: %w", len(s), err)
	}
	return nil
}

// WriteLogs implements Store.
func (c *ClickHouse) WriteLogs(ctx context.Context, l []LogLine) error {
	if len(l) == 0 {
		return nil
	}
	type key struct {
		device  uuid.UUID
		service string
		seq     int64
	}
	seen := make(map[key]bool, len(l))
	err := c.insert(ctx, "INSERT INTO device_logs (device_id, org_id, service, seq, ts_us, stream, line)",
		func(b driver.Batch) error {
			for _, x := range l {
				// FINAL hides a repeat either way; skipping it here only
				// saves storing it until the next merge.
				k := key{x.DeviceID, x.Service, x.Seq}
				if seen[k] {
					continue
				}
				seen[k] = true
				if err := b.Append(x.DeviceID, x.OrgID, x.Service, x.Seq, x.TS.UnixMicro(), x.Stream, x.Line); err != nil {
					return fmt.Errorf("line %s/%d of device %s: %w", x.Service, x.Seq, x.DeviceID, err)
				}
			}
			return nil
		})
	if err != nil {
		return fmt.Errorf("write %d log lines: %w", len(l), err)
	}
	return nil
}

// WriteConnectivity implements Store.
func (c *ClickHouse) WriteConnectivity(ctx context.Context, ev []Connectivity) error {
	if len(ev) == 0 {
		return nil
	}
	type key struct {
		device uuid.UUID
		seq    int64
		event  string
	}
	seen := make(map[key]bool, len(ev))
	err := c.insert(ctx, "INSERT INTO connectivity_events (device_id, org_id, connection_seq, event, at_us)",
		func(b driver.Batch) error {
			for _, x := range ev {
				k := key{x.DeviceID, x.ConnectionSeq, x.Event}
				if seen[k] {
					continue
				}
				seen[k] = true
				if err := b.Append(x.DeviceID, x.OrgID, x.ConnectionSeq, x.Event, x.At.UnixMicro()); err != nil {
					return fmt.Errorf("%s event of connection %d of device %s: %w", x.Event, x.ConnectionSeq, x.DeviceID, err)
				}
			}
			return nil
		})
	if err != nil {
		return fmt.Errorf("write %d connectivity events: %w", len(ev), err)
	}
	return nil
}

// insert sends the rows appendRows adds as one INSERT. A row the batch
// refuses (an unknown stream or event does not fit the enum) fails the
// batch before anything is sent.
func (c *ClickHouse) insert(ctx context.Context, insert string, appendRows func(driver.Batch) error) error {
	b, err := c.conn.PrepareBatch(ctx, insert)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := appendRows(b); err != nil {
		return err
	}
	return b.Send()
}

// Samples implements Store.
func (c *ClickHouse) Samples(ctx context.Context, device uuid.UUID, name string, since, until time.Time, limit int) ([]Sample, error) {
	n, err := rowLimit(limit)
	if err != nil {
		return nil, err
	}
	q := `SELECT device_id, org_id, ts_us, name, value, unit, label_keys, label_values
		FROM telemetry_samples WHERE device_id = toUUID(?) AND name = ?`
	args := []any{device.String(), name}
	if !since.IsZero() {
		q += " AND ts_us >= ?"
		args = append(args, since.UnixMicro())
	}
	if !until.IsZero() {
		q += " AND ts_us < ?"
		args = append(args, until.UnixMicro())
	}
	q += " ORDER BY ts_us DESC LIMIT ?"
	args = append(args, n)

	var out []Sample
	err = c.query(ctx, q, args, func(r driver.Rows) error {
		var x Sample
		var ts int64
		var keys, values []string
		if err := r.Scan(&x.DeviceID, &x.OrgID, &ts, &x.Name, &x.Value, &x.Unit, &keys, &values); err != nil {
			return err
		}
		x.TS = fromMicros(ts)
		x.Labels = joinLabels(keys, values)
		out = append(out, x)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list samples %s of device %s: %w", name, device, err)
	}
	return out, nil
}

// Connectivity implements Store.
func (c *ClickHouse) Connectivity(ctx context.Context, device uuid.UUID, before *ConnectivityCursor, limit int) ([]Connectivity, error) {
	n, err := rowLimit(limit)
	if err != nil {
		return nil, err
	}
	q := `SELECT device_id, org_id, connection_seq, toString(event), at_us
		FROM connectivity_events FINAL WHERE device_id = toUUID(?)`
	args := []any{device.String()}
	if before != nil {
		// (at, seq, event) < cursor, spelt out: 18.16 does not compare tuples.
		// The event compares as text so that an empty one, which the enum
		// cannot hold, sorts before both events.
		at := before.At.UnixMicro()
		q += ` AND (at_us < ? OR (at_us = ? AND (connection_seq < ?
			OR (connection_seq = ? AND toString(event) < ?))))`
		args = append(args, at, at, before.ConnectionSeq, before.ConnectionSeq, before.Event)
	}
	q += " ORDER BY at_us DESC, connection_seq DESC, event DESC LIMIT ?"
	args = append(args, n)

	var out []Connectivity
	err = c.query(ctx, q, args, func(r driver.Rows) error {
		var x Connectivity
		var at int64
		if err := r.Scan(&x.DeviceID, &x.OrgID, &x.ConnectionSeq, &x.Event, &at); err != nil {
			return err
		}
		x.At = fromMicros(at)
		out = append(out, x)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list connectivity of device %s: %w", device, err)
	}
	return out, nil
}

// Logs implements Store.
func (c *ClickHouse) Logs(ctx context.Context, device uuid.UUID, lq LogQuery) ([]LogLine, error) {
	n, err := rowLimit(lq.Limit)
	if err != nil {
		return nil, err
	}
	q := `SELECT device_id, org_id, service, seq, ts_us, toString(stream), line
		FROM device_logs FINAL WHERE device_id = toUUID(?)`
	args := []any{device.String()}
	if lq.Service != "" {
		q += " AND service = ?"
		args = append(args, lq.Service)
	}
	if !lq.Since.IsZero() {
		q += " AND ts_us >= ?"
		args = append(args, lq.Since.UnixMicro())
	}
	if !lq.Until.IsZero() {
		q += " AND ts_us < ?"
		args = append(args, lq.Until.UnixMicro())
	}
	if lq.Contains != "" {
		// A plain substring search: no pattern characters to escape.
		q += " AND positionCaseInsensitiveUTF8(line, ?) > 0"
		args = append(args, lq.Contains)
	}
	cmp, order := "<", "DESC"
	if lq.OldestFirst {
		cmp, order = ">", "ASC"
	}
	if a := lq.After; a != nil {
		// (ts, service, seq) beyond the cursor, spelt out: 18.16 does not
		// compare tuples.
		ts := a.TS.UnixMicro()
		q += fmt.Sprintf(` AND (ts_us %[1]s ? OR (ts_us = ? AND (service %[1]s ? OR (service = ? AND seq %[1]s ?))))`, cmp)
		args = append(args, ts, ts, a.Service, a.Service, a.Seq)
	}
	q += fmt.Sprintf(" ORDER BY ts_us %[1]s, service %[1]s, seq %[1]s LIMIT ?", order)
	args = append(args, n)

	var out []LogLine
	err = c.query(ctx, q, args, func(r driver.Rows) error {
		var x LogLine
		var ts int64
		if err := r.Scan(&x.DeviceID, &x.OrgID, &x.Service, &x.Seq, &ts, &x.Stream, &x.Line); err != nil {
			return err
		}
		x.TS = fromMicros(ts)
		out = append(out, x)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list logs of device %s: %w", device, err)
	}
	return out, nil
}

// WriteUpdateEvents implements Store.
func (c *ClickHouse) WriteUpdateEvents(ctx context.Context, e []UpdateEvent) error {
	if len(e) == 0 {
		return nil
	}
	type key struct{ device, id uuid.UUID }
	seen := make(map[key]bool, len(e))
	err := c.insert(ctx, "INSERT INTO update_events (device_id, org_id, id, ts_us, received_us, type, release_id, service, progress, error, keep)",
		func(b driver.Batch) error {
			for _, x := range e {
				k := key{x.DeviceID, x.ID}
				if seen[k] {
					continue
				}
				seen[k] = true
				progress := int8(-1)
				if x.Progress != nil {
					if *x.Progress < 0 || *x.Progress > 100 {
						return fmt.Errorf("update event %s of device %s: progress %d is not a percentage", x.ID, x.DeviceID, *x.Progress)
					}
					progress = int8(*x.Progress)
				}
				release := ""
				if x.ReleaseID.Valid {
					release = x.ReleaseID.UUID.String()
				}
				received := x.ReceivedAt.UnixMicro()
				if err := b.Append(x.DeviceID, x.OrgID, x.ID.String(), x.TS.UnixMicro(), received,
					x.Type, release, x.Service, progress, x.Error, keepEarliest(received)); err != nil {
					return fmt.Errorf("update event %s of device %s: %w", x.ID, x.DeviceID, err)
				}
			}
			return nil
		})
	if err != nil {
		return fmt.Errorf("write %d update events: %w", len(e), err)
	}
	return nil
}

// keepEarliest is update_events.keep for a copy received at us: higher for
// earlier copies, so a merge keeps the first one received.
func keepEarliest(us int64) uint64 {
	return uint64(math.MaxInt64) - uint64(max(us, 0))
}

// UpdateEvents implements Store.
func (c *ClickHouse) UpdateEvents(ctx context.Context, device uuid.UUID, since, until time.Time, after *UpdateEventCursor, limit int) ([]UpdateEvent, error) {
	n, err := rowLimit(limit)
	if err != nil {
		return nil, err
	}
	q := `SELECT device_id, org_id, id, ts_us, received_us, type, release_id, service, progress, error
		FROM update_events FINAL WHERE device_id = toUUID(?)`
	args := []any{device.String()}
	if !since.IsZero() {
		q += " AND ts_us >= ?"
		args = append(args, since.UnixMicro())
	}
	if !until.IsZero() {
		q += " AND ts_us < ?"
		args = append(args, until.UnixMicro())
	}
	if after != nil {
		ts := after.TS.UnixMicro()
		q += " AND (ts_us < ? OR (ts_us = ? AND id < ?))"
		args = append(args, ts, ts, after.ID.String())
	}
	q += " ORDER BY ts_us DESC, id DESC LIMIT ?"
	args = append(args, n)

	var out []UpdateEvent
	err = c.query(ctx, q, args, func(r driver.Rows) error {
		var x UpdateEvent
		var id, release string
		var ts, received int64
		var progress int8
		if err := r.Scan(&x.DeviceID, &x.OrgID, &id, &ts, &received, &x.Type, &release, &x.Service, &progress, &x.Error); err != nil {
			return err
		}
		var err error
		if x.ID, err = uuid.Parse(id); err != nil {
			return fmt.Errorf("stored event id %q: %w", id, err)
		}
		if release != "" {
			r, err := uuid.Parse(release)
			if err != nil {
				return fmt.Errorf("stored release id %q of event %s: %w", release, id, err)
			}
			x.ReleaseID = uuid.NullUUID{UUID: r, Valid: true}
		}
		if progress >= 0 {
			p := int(progress)
			x.Progress = &p
		}
		x.TS, x.ReceivedAt = fromMicros(ts), fromMicros(received)
		out = append(out, x)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list update events of device %s: %w", device, err)
	}
	return out, nil
}

// Series implements Store. The last value of a step is the value at its
// newest instant, the largest when several share it, as in PostgreSQL:
// argMax over (ts, value) picks that row.
func (c *ClickHouse) Series(ctx context.Context, device uuid.UUID, names []string, since, until time.Time, step time.Duration) ([]Series, error) {
	origin, stepUS, err := seriesArgs(names, since, until, step)
	if err != nil {
		return nil, err
	}
	// Both numbers are cast: 18.16 divides an Int64 by a UInt64 literal as
	// unsigned.
	const q = `SELECT name, intDiv(ts_us - toInt64(?), toInt64(?)) AS step,
			count(), min(value), max(value), avg(value),
			argMax(value, (ts_us, value)), argMax(unit, (ts_us, unit))
		FROM telemetry_samples
		WHERE device_id = toUUID(?) AND has(?, name) AND ts_us >= ? AND ts_us < ?
		GROUP BY name, step
		ORDER BY name, step`
	args := []any{origin, stepUS, device.String(), names, since.UnixMicro(), until.UnixMicro()}
	var rows []seriesPoint
	err = c.query(ctx, q, args, func(r driver.Rows) error {
		var x seriesPoint
		var count uint64
		if err := r.Scan(&x.name, &x.step, &count, &x.p.Min, &x.p.Max, &x.p.Avg, &x.p.Last, &x.unit); err != nil {
			return err
		}
		x.p.Count = int64(count)
		rows = append(rows, x)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("aggregate series %v of device %s: %w", names, device, err)
	}
	return assembleSeries(names, origin, stepUS, rows), nil
}

// MetricNames implements Store.
func (c *ClickHouse) MetricNames(ctx context.Context, device uuid.UUID) ([]Metric, error) {
	const q = `SELECT name, argMax(unit, (ts_us, unit)), max(ts_us)
		FROM telemetry_samples WHERE device_id = toUUID(?)
		GROUP BY name ORDER BY name`
	var out []Metric
	err := c.query(ctx, q, []any{device.String()}, func(r driver.Rows) error {
		var x Metric
		var ts int64
		if err := r.Scan(&x.Name, &x.Unit, &ts); err != nil {
			return err
		}
		x.LastTS = fromMicros(ts)
		out = append(out, x)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list metric names of device %s: %w", device, err)
	}
	sortMetrics(out)
	return out, nil
}

func (c *ClickHouse) query(ctx context.Context, q string, args []any, scan func(driver.Rows) error) error {
	rows, err := c.conn.Query(ctx, q, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := scan(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// retained lists the tables DeleteBefore trims, with their time column and
// whether reads deduplicate them (and so whether counts must).
var retained = []struct {
	table, timeCol string
	final          bool
}{
	{"telemetry_samples", "ts_us", false},
	{"device_logs", "ts_us", true},
	{"connectivity_events", "at_us", true},
	{"update_events", "ts_us", true},
}

// DeleteBefore drops the day partitions that hold only rows older than t,
// then deletes the older rows of t's own day with a mutation. Called with a
// midnight (UTC), as a daily retention job would, it only drops partitions;
// any other t costs a mutation, which on 18.16 rewrites every part of the
// table, matching rows or not.
//
// Rows are counted before they go, since neither DROP PARTITION nor a
// mutation reports a count; a row written older than t while this runs may
// go uncounted. The count is of rows as reads see them: a redelivered log
// line that is not merged yet counts once. On an error, the count covers the
// tables trimmed before it.
func (c *ClickHouse) DeleteBefore(ctx context.Context, t time.Time) (int64, error) {
	cut := t.UnixMicro()
	var total int64
	for _, tb := range retained {
		n, err := c.deleteBefore(ctx, tb.table, tb.timeCol, tb.final, cut)
		total += n
		if err != nil {
			return total, fmt.Errorf("delete %s before %s: %w", tb.table, t.UTC().Format(time.RFC3339Nano), err)
		}
	}
	return total, nil
}

func (c *ClickHouse) deleteBefore(ctx context.Context, table, timeCol string, final bool, cut int64) (int64, error) {
	from := table
	if final {
		from += " FINAL"
	}
	countOld := func() (uint64, error) {
		var n uint64
		err := c.conn.QueryRow(ctx, fmt.Sprintf("SELECT count() FROM %s WHERE %s < ?", from, timeCol), cut).Scan(&n)
		return n, err
	}
	n, err := countOld()
	if err != nil || n == 0 {
		return 0, err
	}

	parts, err := c.conn.Query(ctx,
		"SELECT DISTINCT partition FROM system.parts WHERE database = ? AND table = ? AND active", c.db, table)
	if err != nil {
		return 0, fmt.Errorf("list partitions: %w", err)
	}
	var days []int64
	for parts.Next() {
		var p string
		if err := parts.Scan(&p); err != nil {
			parts.Close()
			return 0, fmt.Errorf("list partitions: %w", err)
		}
		day, err := strconv.ParseInt(p, 10, 64)
		if err != nil {
			parts.Close()
			return 0, fmt.Errorf("partition %q is not a day number: %w", p, err)
		}
		days = append(days, day)
	}
	parts.Close()
	if err := parts.Err(); err != nil {
		return 0, fmt.Errorf("list partitions: %w", err)
	}
	for _, day := range days {
		if partitionNewest(day) >= cut {
			continue
		}
		if err := c.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DROP PARTITION %d", table, day)); err != nil {
			return 0, fmt.Errorf("drop partition %d: %w", day, err)
		}
	}

	// Whatever is still older than cut shares a day with newer rows.
	left, err := countOld()
	if err != nil || left == 0 {
		return int64(n), err
	}
	if err := c.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s DELETE WHERE %s < %d", table, timeCol, cut)); err != nil {
		return 0, fmt.Errorf("delete rows of the partial day: %w", err)
	}
	if err := c.awaitMutations(ctx, table); err != nil {
		return 0, err
	}
	return int64(n), nil
}

// partitionNewest is the newest time a row of partition day can have. The
// partition key truncates toward zero, so day 0 also holds the day before the
// epoch and a negative day d holds (d-1, d] days.
func partitionNewest(day int64) int64 {
	if day < 0 {
		return day * dayMicros
	}
	return (day+1)*dayMicros - 1
}

// awaitMutations waits until table has no mutation left to run: 18.16 runs
// ALTER ... DELETE in the background and has no setting to wait for it, and
// the contract promises the rows are gone when DeleteBefore returns.
func (c *ClickHouse) awaitMutations(ctx context.Context, table string) error {
	delay := 10 * time.Millisecond
	for {
		var pending uint64
		err := c.conn.QueryRow(ctx,
			"SELECT count() FROM system.mutations WHERE database = ? AND table = ? AND is_done = 0", c.db, table).Scan(&pending)
		if err != nil {
			return fmt.Errorf("check mutations: %w", err)
		}
		if pending == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the delete mutation: %w", context.Cause(ctx))
		case <-time.After(delay):
		}
		delay = min(2*delay, time.Second)
	}
}

// Ping implements Store.
func (c *ClickHouse) Ping(ctx context.Context) error {
	if err := c.conn.Ping(ctx); err != nil {
		return fmt.Errorf("ping ClickHouse: %w", err)
	}
	return nil
}

// splitLabels turns labels into the parallel key and value arrays the table
// keeps, sorted by key so equal label sets are stored identically.
func splitLabels(m map[string]string) (keys, values []string) {
	keys = make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	values = make([]string, len(keys))
	for i, k := range keys {
		values[i] = m[k]
	}
	return keys, values
}

func joinLabels(keys, values []string) map[string]string {
	if len(keys) == 0 {
		return nil
	}
	m := make(map[string]string, len(keys))
	for i, k := range keys {
		if i < len(values) {
			m[k] = values[i]
		}
	}
	return m
}

func fromMicros(us int64) time.Time { return time.UnixMicro(us).UTC() }

// quoteIdent quotes a database name for the statements that cannot take it
// as a bound value.
func quoteIdent(s string) string {
	return "`" + strings.NewReplacer("\\", "\\\\", "`", "\\`").Replace(s) + "`"
}

// stripComments removes -- comments so a chunk of the schema holding only
// comments is recognised as empty.
func stripComments(s string) string {
	var b strings.Builder
	for line := range strings.Lines(s) {
		if i := strings.Index(line, "--"); i >= 0 {
			line = line[:i]
		}
		b.WriteString(line)
	}
	return b.String()
}
