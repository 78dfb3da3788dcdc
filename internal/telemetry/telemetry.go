// Package telemetry is where the ingester puts what devices send in volume:
// metric samples, container log lines and connectivity events. Production
// keeps them in ClickHouse; without FLOCK_CLICKHOUSE_URL they go to
// PostgreSQL tables (NewPostgres). Every store passes the conformance suite
// in package telemetrytest, so the API reads the same answers from either.
//
// Rules every store follows, checked by the suite:
//
//   - Writes are batches, and an empty batch is a no-op that never touches
//     the backend. The ingester delivers at least once, so writing a log
//     line (device, service, seq) or a connectivity event (device,
//     connection_seq, event) that is already stored, even twice in one
//     batch, stores nothing. Samples have no natural key and are not
//     deduplicated.
//   - Times keep microsecond precision and are returned in UTC.
//   - Update events are keyed by (device, id): the id is the device's own,
//     stable across redeliveries, so a repeated one stores nothing and the
//     copy received first is what reads return (which one, when copies
//     that differ share a reception time, is not defined).
//   - Reads return newest first (logs may be asked oldest first). Ties are
//     broken so that every row has one place in the order: logs by (ts,
//     service, seq), connectivity by (at, connection_seq, event), update
//     events by (ts, id), all descending (so a disconnect sorts before a
//     connect of the same connection and instant). Keyset cursors take the
//     whole sort key, so pages never skip or repeat a row.
//   - A zero since or until means no bound, since is inclusive and until
//     exclusive; limit must be positive.
//   - Labels that are nil or empty are both read back as nil.
//   - Series aggregates samples per step, steps aligned to the Unix epoch;
//     the last value of a step is its newest sample's, the largest of them
//     when several share that instant.
package telemetry

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Connectivity events and log streams, as the AsyncAPI document names them.
const (
	EventConnected    = "connected"
	EventDisconnected = "disconnected"

	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// Sample is one metric value, e.g. cpu.temperature at TS.
type Sample struct {
	DeviceID, OrgID uuid.UUID
	TS              time.Time
	Name            string
	Value           float64
	Unit            string
	Labels          map[string]string
}

// LogLine is one line a container wrote. Seq numbers the lines of one
// service of one device; a repeated Seq is a redelivery.
type LogLine struct {
	DeviceID, OrgID uuid.UUID
	Service         string
	Seq             int64
	TS              time.Time
	Stream          string // StreamStdout or StreamStderr
	Line            string
}

// Connectivity is a device connecting or disconnecting. ConnectionSeq grows
// with each connection; both events of one connection carry the same one.
type Connectivity struct {
	DeviceID, OrgID uuid.UUID
	ConnectionSeq   int64
	Event           string // EventConnected or EventDisconnected
	At              time.Time
}

// ConnectivityCursor marks where a page of connectivity events ended; the
// next page holds the events strictly after it in newest-first order. Take
// it from the last event of a page with Connectivity.Cursor. An empty Event
// skips every event of (At, ConnectionSeq), which is what a cursor built from
// only a time and a sequence means.
type ConnectivityCursor struct {
	At            time.Time
	ConnectionSeq int64
	Event         string
}

// Cursor returns the cursor that continues a listing after c.
func (c Connectivity) Cursor() *ConnectivityCursor {
	return &ConnectivityCursor{At: c.At, ConnectionSeq: c.ConnectionSeq, Event: c.Event}
}

// LogCursor marks where a page of log lines ended; the next page holds the
// lines strictly after it in the query's order. Take it from the last line
// of a page with LogLine.Cursor.
type LogCursor struct {
	TS      time.Time
	Service string
	Seq     int64
}

// Cursor returns the cursor that continues a listing after l.
func (l LogLine) Cursor() *LogCursor {
	return &LogCursor{TS: l.TS, Service: l.Service, Seq: l.Seq}
}

// LogQuery selects a page of a device's log lines.
type LogQuery struct {
	// Service keeps one service's lines; empty keeps every service.
	Service string
	// Since (inclusive) and Until (exclusive) bound ts; zero is no bound.
	Since, Until time.Time
	// Contains keeps lines holding this text, ignoring case. It is plain
	// text: LIKE's wildcards in it match themselves.
	Contains string
	// After continues a listing after the line it was taken from.
	After *LogCursor
	// OldestFirst reverses the order (and what After means): a follower
	// replays history from Since forwards.
	OldestFirst bool
	Limit       int
}

// Update event types, as the AsyncAPI document names them.
const (
	UpdateDownloadStarted  = "download_started"
	UpdateDownloadProgress = "download_progress"
	UpdateDownloadFinished = "download_finished"
	UpdateInstallStarted   = "install_started"
	UpdateInstalled        = "installed"
	UpdateFailed           = "failed"
	UpdateRolledBack       = "rolled_back"
)

// UpdateEvent is one step of an update a device reported. ID is the
// device's, stable across redeliveries; TS is the device's clock and
// ReceivedAt the ingester's.
type UpdateEvent struct {
	DeviceID, OrgID uuid.UUID
	ID              uuid.UUID
	TS, ReceivedAt  time.Time
	Type            string
	ReleaseID       uuid.NullUUID
	Service         string // empty when the event is not about one service
	Progress        *int   // percent, when the device said
	Error           string
}

// UpdateEventCursor marks where a page of update events ended.
type UpdateEventCursor struct {
	TS time.Time
	ID uuid.UUID
}

// Cursor returns the cursor that continues a listing after e.
func (e UpdateEvent) Cursor() *UpdateEventCursor {
	return &UpdateEventCursor{TS: e.TS, ID: e.ID}
}

// Point is one step of a series: the samples with Start <= ts < Start+step.
type Point struct {
	Start               time.Time
	Count               int64
	Min, Max, Avg, Last float64
}

// Series is one metric of a device, aggregated per step.
type Series struct {
	Name string
	// Unit is the newest sample's in the range; empty when it has none.
	Unit string
	// Points lists the steps that hold samples, oldest first.
	Points []Point
}

// Metric is a name a device has samples of.
type Metric struct {
	Name string
	// Unit and LastTS are the newest sample's.
	Unit   string
	LastTS time.Time
}

// Store is where telemetry, logs and connectivity go. Implementations must
// make every write idempotent where the data has a natural key (logs,
// connectivity), because the ingester delivers at least once. The package
// documentation lists the rest of the contract.
type Store interface {
	WriteSamples(ctx context.Context, s []Sample) error
	WriteLogs(ctx context.Context, l []LogLine) error
	WriteConnectivity(ctx context.Context, c []Connectivity) error
	// Samples returns one series of a device within [since, until), newest
	// first.
	Samples(ctx context.Context, device uuid.UUID, name string, since, until time.Time, limit int) ([]Sample, error)
	// Connectivity returns a device's events newest first, after before when
	// it is not nil.
	Connectivity(ctx context.Context, device uuid.UUID, before *ConnectivityCursor, limit int) ([]Connectivity, error)
	// Logs returns a page of a device's lines, newest first unless the
	// query asks otherwise.
	Logs(ctx context.Context, device uuid.UUID, q LogQuery) ([]LogLine, error)
	// WriteUpdateEvents stores e, skipping events already stored.
	WriteUpdateEvents(ctx context.Context, e []UpdateEvent) error
	// UpdateEvents returns a device's update events within [since, until),
	// newest first, after the cursor when it is not nil.
	UpdateEvents(ctx context.Context, device uuid.UUID, since, until time.Time, after *UpdateEventCursor, limit int) ([]UpdateEvent, error)
	// Series aggregates the named metrics of a device within [since, until)
	// per step: one Series per name, in the order given. Both bounds are
	// instants (the zero time is the start of year 1, not "no bound"),
	// until after since, and step at least a microsecond; a step start is
	// a multiple of step since the Unix epoch.
	Series(ctx context.Context, device uuid.UUID, names []string, since, until time.Time, step time.Duration) ([]Series, error)
	// MetricNames lists the metrics a device has samples of, by name
	// (bytewise).
	MetricNames(ctx context.Context, device uuid.UUID) ([]Metric, error)
	// DeleteBefore is retention: it drops every sample, log line,
	// connectivity event and update event older than t and reports how
	// many it dropped.
	DeleteBefore(ctx context.Context, t time.Time) (int64, error)
	Ping(ctx context.Context) error
}

// rowLimit checks a read's limit and fits it to the int32 the stores take.
func rowLimit(limit int) (int32, error) {
	if limit < 1 {
		return 0, fmt.Errorf("limit %d: must be positive", limit)
	}
	return int32(min(limit, math.MaxInt32)), nil
}

// seriesArgs checks a Series call and returns the first step's start and
// the step in microseconds. Steps start at multiples of step since the
// epoch; the first is the one holding since (floor, also before 1970), so
// every sample's offset from it is non-negative and integer division gives
// its step on either store.
func seriesArgs(names []string, since, until time.Time, step time.Duration) (origin, stepUS int64, err error) {
	switch {
	case !until.After(since):
		return 0, 0, fmt.Errorf("series range [%s, %s) is empty", since, until)
	case step < time.Microsecond:
		return 0, 0, fmt.Errorf("series step %s: must be at least a microsecond", step)
	case len(names) == 0:
		return 0, 0, fmt.Errorf("series needs at least one metric name")
	}
	stepUS = int64(step / time.Microsecond)
	s := since.UnixMicro()
	origin = s / stepUS * stepUS
	if origin > s {
		origin -= stepUS
	}
	return origin, stepUS, nil
}

// timeBound turns the zero time, which callers use for "no bound", into nil.
func timeBound(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// seriesPoint is one row of a store's series query: a step of one metric,
// numbered from the origin seriesArgs returned.
type seriesPoint struct {
	name string
	step int64
	unit string // of the step's newest sample
	p    Point
}

// assembleSeries turns rows ordered by name and step into one Series per
// name asked for, in that order.
func assembleSeries(names []string, origin, stepUS int64, rows []seriesPoint) []Series {
	byName := make(map[string]*Series, len(names))
	out := make([]Series, len(names))
	for i, n := range names {
		out[i].Name = n
		if _, dup := byName[n]; !dup {
			byName[n] = &out[i]
		}
	}
	for _, r := range rows {
		s := byName[r.name]
		if s == nil {
			continue
		}
		r.p.Start = fromMicros(origin + r.step*stepUS)
		s.Points = append(s.Points, r.p)
		s.Unit = r.unit // rows are oldest first, so the newest step's wins
	}
	// A name asked for twice gets the same series twice.
	for i := range out {
		if s := byName[out[i].Name]; s != &out[i] {
			out[i] = *s
		}
	}
	return out
}

// sortMetrics orders by name bytewise, which PostgreSQL's collation may not.
func sortMetrics(m []Metric) {
	slices.SortFunc(m, func(a, b Metric) int { return strings.Compare(a.Name, b.Name) })
}
