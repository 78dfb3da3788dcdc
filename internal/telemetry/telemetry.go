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
//   - Reads return newest first. Ties are broken so that every row has one
//     place in the order: logs by (ts, service, seq), connectivity by (at,
//     connection_seq, event), all descending (so a disconnect sorts before a
//     connect of the same connection and instant).
//   - A zero since or until means no bound; limit must be positive.
//   - Labels that are nil or empty are both read back as nil.
package telemetry

import (
	"context"
	"fmt"
	"math"
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
	// Logs returns a device's lines at or after since, newest first; an
	// empty service means every service.
	Logs(ctx context.Context, device uuid.UUID, service string, since time.Time, limit int) ([]LogLine, error)
	// DeleteBefore is retention: it drops every sample, log line and
	// connectivity event older than t and reports how many it dropped.
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

// timeBound turns the zero time, which callers use for "no bound", into nil.
func timeBound(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
