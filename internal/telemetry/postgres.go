package telemetry

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
)

// Postgres is the store used when ClickHouse is not configured: the tables
// of migrations 00004 and 00010. Each write is one statement, so a batch is stored
// entirely or not at all.
type Postgres struct {
	pool *pgxpool.Pool
	q    *db.Queries
}

var _ Store = (*Postgres)(nil)

// NewPostgres returns a store on pool, which must have the migrations applied.
func NewPostgres(pool *pgxpool.Pool) *Postgres {
	return &Postgres{pool: pool, q: db.New(pool)}
}

// WriteSamples stores s with COPY.
func (p *Postgres) WriteSamples(ctx context.Context, s []Sample) error {
	if len(s) == 0 {
		return nil
	}
	rows := make([]db.TelemetrySampleCopyParams, len(s))
	for i, x := range s {
		labels, err := marshalLabels(x.Labels)
		if err != nil {
			return fmt.Errorf("encode labels of sample %s of device %s: %w", x.Name, x.DeviceID, err)
		}
		rows[i] = db.TelemetrySampleCopyParams{
			DeviceID: x.DeviceID, OrgID: x.OrgID, Ts: x.TS, Name: x.Name,
			Value: x.Value, Unit: x.Unit, Labels: labels,
		}
	}
	if _, err := p.q.TelemetrySampleCopy(ctx, rows); err != nil {
		return fmt.Errorf("copy %d telemetry samples: %w", len(s), err)
	}
	return nil
}

// WriteLogs stores l, skipping lines already stored.
func (p *Postgres) WriteLogs(ctx context.Context, l []LogLine) error {
	if len(l) == 0 {
		return nil
	}
	arg := db.DeviceLogInsertParams{
		DeviceIds: make([]uuid.UUID, len(l)),
		OrgIds:    make([]uuid.UUID, len(l)),
		Services:  make([]string, len(l)),
		Seqs:      make([]int64, len(l)),
		Ts:        make([]time.Time, len(l)),
		Streams:   make([]string, len(l)),
		Lines:     make([]string, len(l)),
	}
	for i, x := range l {
		arg.DeviceIds[i], arg.OrgIds[i], arg.Services[i], arg.Seqs[i] = x.DeviceID, x.OrgID, x.Service, x.Seq
		arg.Ts[i], arg.Streams[i], arg.Lines[i] = x.TS, x.Stream, x.Line
	}
	if err := p.q.DeviceLogInsert(ctx, arg); err != nil {
		return fmt.Errorf("insert %d log lines: %w", len(l), err)
	}
	return nil
}

// WriteConnectivity stores c, skipping events already stored.
func (p *Postgres) WriteConnectivity(ctx context.Context, c []Connectivity) error {
	if len(c) == 0 {
		return nil
	}
	arg := db.ConnectivityInsertParams{
		DeviceIds:      make([]uuid.UUID, len(c)),
		OrgIds:         make([]uuid.UUID, len(c)),
		ConnectionSeqs: make([]int64, len(c)),
		Events:         make([]string, len(c)),
		Ats:            make([]time.Time, len(c)),
	}
	for i, x := range c {
		arg.DeviceIds[i], arg.OrgIds[i], arg.ConnectionSeqs[i] = x.DeviceID, x.OrgID, x.ConnectionSeq
		arg.Events[i], arg.Ats[i] = x.Event, x.At
	}
	if err := p.q.ConnectivityInsert(ctx, arg); err != nil {
		return fmt.Errorf("insert %d connectivity events: %w", len(c), err)
	}
	return nil
}

// Samples implements Store.
func (p *Postgres) Samples(ctx context.Context, device uuid.UUID, name string, since, until time.Time, limit int) ([]Sample, error) {
	n, err := rowLimit(limit)
	if err != nil {
		return nil, err
	}
	rows, err := p.q.TelemetryList(ctx, db.TelemetryListParams{
		DeviceID: device, Name: name, Since: timeBound(since), Until: timeBound(until), MaxRows: n,
	})
	if err != nil {
		return nil, fmt.Errorf("list samples %s of device %s: %w", name, device, err)
	}
	out := make([]Sample, len(rows))
	for i, r := range rows {
		labels, err := unmarshalLabels(r.Labels)
		if err != nil {
			return nil, fmt.Errorf("decode labels of sample %s of device %s at %s: %w", name, device, r.Ts, err)
		}
		out[i] = Sample{
			DeviceID: r.DeviceID, OrgID: r.OrgID, TS: r.Ts.UTC(), Name: r.Name,
			Value: r.Value, Unit: r.Unit, Labels: labels,
		}
	}
	return out, nil
}

// Connectivity implements Store.
func (p *Postgres) Connectivity(ctx context.Context, device uuid.UUID, before *ConnectivityCursor, limit int) ([]Connectivity, error) {
	n, err := rowLimit(limit)
	if err != nil {
		return nil, err
	}
	arg := db.ConnectivityListParams{DeviceID: device, MaxRows: n}
	if before != nil {
		arg.BeforeAt, arg.BeforeSeq, arg.BeforeEvent = &before.At, &before.ConnectionSeq, &before.Event
	}
	rows, err := p.q.ConnectivityList(ctx, arg)
	if err != nil {
		return nil, fmt.Errorf("list connectivity of device %s: %w", device, err)
	}
	out := make([]Connectivity, len(rows))
	for i, r := range rows {
		out[i] = Connectivity{
			DeviceID: r.DeviceID, OrgID: r.OrgID, ConnectionSeq: r.ConnectionSeq, Event: r.Event, At: r.At.UTC(),
		}
	}
	return out, nil
}

// Logs implements Store.
func (p *Postgres) Logs(ctx context.Context, device uuid.UUID, q LogQuery) ([]LogLine, error) {
	n, err := rowLimit(q.Limit)
	if err != nil {
		return nil, err
	}
	var service, pattern *string
	if q.Service != "" {
		service = &q.Service
	}
	if q.Contains != "" {
		p := "%" + likeEscaper.Replace(q.Contains) + "%"
		pattern = &p
	}
	var rows []db.DeviceLog
	if q.OldestFirst {
		arg := db.DeviceLogListOldestFirstParams{DeviceID: device, Service: service, Since: timeBound(q.Since),
			Until: timeBound(q.Until), Pattern: pattern, MaxRows: n}
		if q.After != nil {
			arg.AfterTs, arg.AfterService, arg.AfterSeq = &q.After.TS, &q.After.Service, &q.After.Seq
		}
		rows, err = p.q.DeviceLogListOldestFirst(ctx, arg)
	} else {
		arg := db.DeviceLogListParams{DeviceID: device, Service: service, Since: timeBound(q.Since),
			Until: timeBound(q.Until), Pattern: pattern, MaxRows: n}
		if q.After != nil {
			arg.BeforeTs, arg.BeforeService, arg.BeforeSeq = &q.After.TS, &q.After.Service, &q.After.Seq
		}
		rows, err = p.q.DeviceLogList(ctx, arg)
	}
	if err != nil {
		return nil, fmt.Errorf("list logs of device %s: %w", device, err)
	}
	out := make([]LogLine, len(rows))
	for i, r := range rows {
		out[i] = LogLine{
			DeviceID: r.DeviceID, OrgID: r.OrgID, Service: r.Service, Seq: r.Seq,
			TS: r.Ts.UTC(), Stream: r.Stream, Line: r.Line,
		}
	}
	return out, nil
}

// likeEscaper makes text match itself in a LIKE pattern, whose default
// escape character is the backslash.
var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)

// WriteUpdateEvents stores e, skipping events already stored.
func (p *Postgres) WriteUpdateEvents(ctx context.Context, e []UpdateEvent) error {
	if len(e) == 0 {
		return nil
	}
	arg := db.UpdateEventInsertParams{
		DeviceIds:   make([]uuid.UUID, len(e)),
		OrgIds:      make([]uuid.UUID, len(e)),
		Ids:         make([]uuid.UUID, len(e)),
		Ts:          make([]time.Time, len(e)),
		ReceivedAts: make([]time.Time, len(e)),
		Types:       make([]string, len(e)),
		ReleaseIds:  make([]uuid.UUID, len(e)),
		Services:    make([]string, len(e)),
		Progresses:  make([]int16, len(e)),
		Errors:      make([]string, len(e)),
	}
	for i, x := range e {
		progress := int16(-1) // NULL, see UpdateEventInsert
		if x.Progress != nil {
			if *x.Progress < 0 || *x.Progress > 100 {
				return fmt.Errorf("update event %s of device %s: progress %d is not a percentage", x.ID, x.DeviceID, *x.Progress)
			}
			progress = int16(*x.Progress)
		}
		arg.DeviceIds[i], arg.OrgIds[i], arg.Ids[i] = x.DeviceID, x.OrgID, x.ID
		arg.Ts[i], arg.ReceivedAts[i], arg.Types[i] = x.TS, x.ReceivedAt, x.Type
		arg.ReleaseIds[i], arg.Services[i], arg.Progresses[i], arg.Errors[i] = x.ReleaseID.UUID, x.Service, progress, x.Error
	}
	if err := p.q.UpdateEventInsert(ctx, arg); err != nil {
		return fmt.Errorf("insert %d update events: %w", len(e), err)
	}
	return nil
}

// UpdateEvents implements Store.
func (p *Postgres) UpdateEvents(ctx context.Context, device uuid.UUID, since, until time.Time, after *UpdateEventCursor, limit int) ([]UpdateEvent, error) {
	n, err := rowLimit(limit)
	if err != nil {
		return nil, err
	}
	arg := db.UpdateEventListParams{DeviceID: device, Since: timeBound(since), Until: timeBound(until), MaxRows: n}
	if after != nil {
		arg.BeforeTs, arg.BeforeID = &after.TS, uuid.NullUUID{UUID: after.ID, Valid: true}
	}
	rows, err := p.q.UpdateEventList(ctx, arg)
	if err != nil {
		return nil, fmt.Errorf("list update events of device %s: %w", device, err)
	}
	out := make([]UpdateEvent, len(rows))
	for i, r := range rows {
		out[i] = UpdateEvent{
			DeviceID: r.DeviceID, OrgID: r.OrgID, ID: r.ID, TS: r.Ts.UTC(), ReceivedAt: r.ReceivedAt.UTC(),
			Type: r.Type, ReleaseID: r.ReleaseID, Service: r.Service, Error: r.Error,
		}
		if r.Progress != nil {
			v := int(*r.Progress)
			out[i].Progress = &v
		}
	}
	return out, nil
}

// Series implements Store.
func (p *Postgres) Series(ctx context.Context, device uuid.UUID, names []string, since, until time.Time, step time.Duration) ([]Series, error) {
	origin, stepUS, err := seriesArgs(names, since, until, step)
	if err != nil {
		return nil, err
	}
	rows, err := p.q.TelemetrySeries(ctx, db.TelemetrySeriesParams{
		Origin: fromMicros(origin), StepUs: stepUS, DeviceID: device, Names: names, Since: since, Until: until,
	})
	if err != nil {
		return nil, fmt.Errorf("aggregate series %v of device %s: %w", names, device, err)
	}
	points := make([]seriesPoint, len(rows))
	for i, r := range rows {
		points[i] = seriesPoint{name: r.Name, step: (r.Start.UnixMicro() - origin) / stepUS, unit: r.Unit,
			p: Point{Count: r.Count, Min: r.Min, Max: r.Max, Avg: r.Avg, Last: r.Last}}
	}
	return assembleSeries(names, origin, stepUS, points), nil
}

// MetricNames implements Store.
func (p *Postgres) MetricNames(ctx context.Context, device uuid.UUID) ([]Metric, error) {
	rows, err := p.q.TelemetryMetricNames(ctx, device)
	if err != nil {
		return nil, fmt.Errorf("list metric names of device %s: %w", device, err)
	}
	out := make([]Metric, len(rows))
	for i, r := range rows {
		out[i] = Metric{Name: r.Name, Unit: r.Unit, LastTS: r.Ts.UTC()}
	}
	sortMetrics(out)
	return out, nil
}

// DeleteBefore trims every table in one statement.
func (p *Postgres) DeleteBefore(ctx context.Context, t time.Time) (int64, error) {
	n, err := p.q.TelemetryDeleteBefore(ctx, t)
	if err != nil {
		return 0, fmt.Errorf("delete telemetry before %s: %w", t.Format(time.RFC3339), err)
	}
	return n, nil
}

// Ping implements Store.
func (p *Postgres) Ping(ctx context.Context) error {
	if err := p.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping telemetry database: %w", err)
	}
	return nil
}

// marshalLabels encodes nil as {} because the column is NOT NULL: COPY
// sends NULL for a nil slice rather than taking the column default.
func marshalLabels(m map[string]string) ([]byte, error) {
	if len(m) == 0 {
		return []byte("{}"), nil
	}
	return json.Marshal(m)
}

func unmarshalLabels(b []byte) (map[string]string, error) {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if len(m) == 0 {
		return nil, nil
	}
	return m, nil
}
