// Package telemetrytest is the conformance suite for telemetry.Store. The
// PostgreSQL store and the ClickHouse store run the identical checks, so the
// API returns the same answers whichever one a deployment uses.
package telemetrytest

import (
	"context"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/telemetry"
)

// base is when the suite's data happens. It has a microsecond part so the
// round trips check that stores keep microseconds.
var base = time.Date(2025, 6, 1, 12, 0, 0, 123456000, time.UTC)

// Run runs the suite. newStore is called once per test, and the tests run in
// parallel. Each test uses device ids of its own, but the store must start
// empty: DeleteBefore and its count cover every device.
func Run(t *testing.T, newStore func(t *testing.T) telemetry.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s telemetry.Store)
	}{
		{"SamplesRoundTrip", testSamplesRoundTrip},
		{"LargeSampleBatch", testLargeSampleBatch},
		{"LogsRedeliveredAndFiltered", testLogs},
		{"LogsPaged", testLogPages},
		{"LogsTextFilter", testLogText},
		{"ConnectivityRedeliveredAndPaged", testConnectivity},
		{"UpdateEventsRedeliveredAndPaged", testUpdateEvents},
		{"SeriesAggregates", testSeries},
		{"SeriesArguments", testSeriesArguments},
		{"MetricNames", testMetricNames},
		{"DeleteBefore", testDeleteBefore},
		{"EmptyWrites", testEmptyWrites},
		{"NonPositiveLimit", testNonPositiveLimit},
		{"Ping", testPing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t))
		})
	}
}

func at(d time.Duration) time.Time { return base.Add(d) }

func testSamplesRoundTrip(t *testing.T, s telemetry.Store) {
	ctx := t.Context()
	dev, other, org := uuid.New(), uuid.New(), uuid.New()
	cpu := func(i int, labels map[string]string) telemetry.Sample {
		return telemetry.Sample{DeviceID: dev, OrgID: org, TS: at(time.Duration(i) * time.Second),
			Name: "cpu.temperature", Value: 40 + float64(i)/4, Unit: "C", Labels: labels}
	}
	series := []telemetry.Sample{
		cpu(0, nil),
		cpu(1, map[string]string{"core": "0"}),
		cpu(2, map[string]string{"core": "1", "zone": "soc"}),
		cpu(3, map[string]string{}),
		cpu(4, nil),
	}
	noise := []telemetry.Sample{
		{DeviceID: dev, OrgID: org, TS: at(2 * time.Second), Name: "mem.used", Value: 1 << 30},
		{DeviceID: other, OrgID: org, TS: at(2 * time.Second), Name: "cpu.temperature", Value: -3.5, Unit: "C"},
	}
	// Written out of order, as batches from a reconnecting device arrive.
	batch := []telemetry.Sample{series[3], noise[0], series[0], series[4], noise[1], series[1], series[2]}
	if err := s.WriteSamples(ctx, batch); err != nil {
		t.Fatalf("WriteSamples: %v", err)
	}

	newestFirst := func(idx ...int) []telemetry.Sample {
		out := make([]telemetry.Sample, len(idx))
		for i, j := range idx {
			out[i] = series[j]
		}
		return out
	}
	tests := []struct {
		name         string
		series       string
		since, until time.Time
		limit        int
		want         []telemetry.Sample
	}{
		{"all", "cpu.temperature", time.Time{}, time.Time{}, 100, newestFirst(4, 3, 2, 1, 0)},
		{"since is inclusive, until exclusive", "cpu.temperature", at(time.Second), at(3 * time.Second), 100, newestFirst(2, 1)},
		{"since only", "cpu.temperature", at(3 * time.Second), time.Time{}, 100, newestFirst(4, 3)},
		{"until only", "cpu.temperature", time.Time{}, at(time.Second), 100, newestFirst(0)},
		{"limit keeps the newest", "cpu.temperature", time.Time{}, time.Time{}, 2, newestFirst(4, 3)},
		{"other series", "mem.used", time.Time{}, time.Time{}, 100, noise[:1]},
		{"unknown series", "disk.free", time.Time{}, time.Time{}, 100, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Samples(ctx, dev, tc.series, tc.since, tc.until, tc.limit)
			if err != nil {
				t.Fatalf("Samples: %v", err)
			}
			assertEqual(t, normSamples(got), normSamples(tc.want))
		})
	}
}

func testLargeSampleBatch(t *testing.T, s telemetry.Store) {
	ctx := t.Context()
	dev, org := uuid.New(), uuid.New()
	const n = 2000
	batch := make([]telemetry.Sample, n)
	for i := range batch {
		batch[i] = telemetry.Sample{DeviceID: dev, OrgID: org, TS: at(time.Duration(i) * time.Millisecond),
			Name: "net.rx_bytes", Value: float64(i), Unit: "B", Labels: map[string]string{"if": "eth0"}}
	}
	if err := s.WriteSamples(ctx, batch); err != nil {
		t.Fatalf("WriteSamples(%d samples): %v", n, err)
	}
	got, err := s.Samples(ctx, dev, "net.rx_bytes", time.Time{}, time.Time{}, n+1)
	if err != nil {
		t.Fatalf("Samples: %v", err)
	}
	if len(got) != n {
		t.Fatalf("read %d samples back, want %d", len(got), n)
	}
	for i, g := range got {
		if want := batch[n-1-i]; g.Value != want.Value || !g.TS.Equal(want.TS) {
			t.Fatalf("sample %d = %v at %s, want %v at %s (newest first)", i, g.Value, g.TS, want.Value, want.TS)
		}
	}
}

func testLogs(t *testing.T, s telemetry.Store) {
	ctx := t.Context()
	dev, other, org := uuid.New(), uuid.New(), uuid.New()
	line := func(dev uuid.UUID, service string, seq int64, ts time.Duration, stream string) telemetry.LogLine {
		return telemetry.LogLine{DeviceID: dev, OrgID: org, Service: service, Seq: seq, TS: at(ts), Stream: stream,
			Line: fmt.Sprintf("%s line %d ünïcode\ttab", service, seq)}
	}
	lines := []telemetry.LogLine{
		line(dev, "api", 1, 0, telemetry.StreamStdout),
		line(dev, "api", 2, time.Second, telemetry.StreamStderr),
		line(dev, "worker", 1, time.Second, telemetry.StreamStdout), // same instant as api 2
		line(dev, "worker", 2, 2*time.Second, telemetry.StreamStdout),
		line(dev, "api", 3, 3*time.Second, telemetry.StreamStdout),
		line(dev, "api", 4, 3*time.Second, telemetry.StreamStdout), // same instant as api 3
	}
	// The device resends the batch, a later batch overlaps it, and one batch
	// repeats a line within itself: each line must be stored once.
	writes := [][]telemetry.LogLine{
		lines[:4],
		lines[:4],
		append(append([]telemetry.LogLine{}, lines[2:]...), lines[4]),
		{line(other, "api", 1, 0, telemetry.StreamStdout)},
	}
	for i, w := range writes {
		if err := s.WriteLogs(ctx, w); err != nil {
			t.Fatalf("WriteLogs #%d: %v", i, err)
		}
	}

	pick := func(idx ...int) []telemetry.LogLine {
		out := make([]telemetry.LogLine, len(idx))
		for i, j := range idx {
			out[i] = lines[j]
		}
		return out
	}
	tests := []struct {
		name string
		q    telemetry.LogQuery
		want []telemetry.LogLine
	}{
		// Ties on ts go by service, then seq, both descending.
		{"every service", telemetry.LogQuery{Limit: 100}, pick(5, 4, 3, 2, 1, 0)},
		{"one service", telemetry.LogQuery{Service: "api", Limit: 100}, pick(5, 4, 1, 0)},
		{"since is inclusive", telemetry.LogQuery{Since: at(time.Second), Limit: 100}, pick(5, 4, 3, 2, 1)},
		{"until is exclusive", telemetry.LogQuery{Until: at(2 * time.Second), Limit: 100}, pick(2, 1, 0)},
		{"since and until", telemetry.LogQuery{Since: at(time.Second), Until: at(3 * time.Second), Limit: 100}, pick(3, 2, 1)},
		{"service and since", telemetry.LogQuery{Service: "worker", Since: at(2 * time.Second), Limit: 100}, pick(3)},
		{"limit keeps the newest", telemetry.LogQuery{Limit: 3}, pick(5, 4, 3)},
		{"oldest first", telemetry.LogQuery{OldestFirst: true, Limit: 100}, pick(0, 1, 2, 3, 4, 5)},
		{"oldest first from since", telemetry.LogQuery{OldestFirst: true, Since: at(time.Second), Limit: 2}, pick(1, 2)},
		{"after a cursor", telemetry.LogQuery{After: lines[3].Cursor(), Limit: 100}, pick(2, 1, 0)},
		{"after a cursor, oldest first", telemetry.LogQuery{After: lines[1].Cursor(), OldestFirst: true, Limit: 100}, pick(2, 3, 4, 5)},
		{"unknown service", telemetry.LogQuery{Service: "db", Limit: 100}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Logs(ctx, dev, tc.q)
			if err != nil {
				t.Fatalf("Logs: %v", err)
			}
			assertEqual(t, normLogs(got), normLogs(tc.want))
		})
	}
}

// logOrder sorts lines newest first by (ts, service, seq), the stores' order.
func logOrder(lines []telemetry.LogLine) {
	sort.Slice(lines, func(i, j int) bool {
		a, b := lines[i], lines[j]
		if !a.TS.Equal(b.TS) {
			return a.TS.After(b.TS)
		}
		if a.Service != b.Service {
			return a.Service > b.Service
		}
		return a.Seq > b.Seq
	})
}

// Pages of every size cover every line exactly once, in both orders and
// with filters, across lines that tie on ts, on (ts, seq) between services,
// and services that are prefixes of each other (which sort bytewise).
func testLogPages(t *testing.T, s telemetry.Store) {
	ctx := t.Context()
	dev, org := uuid.New(), uuid.New()
	var lines []telemetry.LogLine
	for i := range 12 {
		for _, svc := range []string{"api", "api-v2", "Api", "worker"} {
			lines = append(lines, telemetry.LogLine{DeviceID: dev, OrgID: org, Service: svc, Seq: int64(i),
				TS: at(time.Duration(i/3) * time.Second), Stream: telemetry.StreamStdout, Line: fmt.Sprintf("%s says %d", svc, i%4)})
		}
	}
	if err := s.WriteLogs(ctx, lines); err != nil {
		t.Fatalf("WriteLogs: %v", err)
	}
	filters := []struct {
		name string
		q    telemetry.LogQuery
		keep func(telemetry.LogLine) bool
	}{
		{"all", telemetry.LogQuery{}, func(telemetry.LogLine) bool { return true }},
		{"one service", telemetry.LogQuery{Service: "api"}, func(l telemetry.LogLine) bool { return l.Service == "api" }},
		{"range", telemetry.LogQuery{Since: at(time.Second), Until: at(3 * time.Second)}, func(l telemetry.LogLine) bool {
			return !l.TS.Before(at(time.Second)) && l.TS.Before(at(3*time.Second))
		}},
		{"text", telemetry.LogQuery{Contains: "SAYS 2"}, func(l telemetry.LogLine) bool { return l.Seq%4 == 2 }},
	}
	for _, f := range filters {
		var want []telemetry.LogLine
		for _, l := range lines {
			if f.keep(l) {
				want = append(want, l)
			}
		}
		logOrder(want)
		oldest := slices.Clone(want)
		slices.Reverse(oldest)
		for _, dir := range []struct {
			name   string
			oldest bool
			want   []telemetry.LogLine
		}{{"newest first", false, want}, {"oldest first", true, oldest}} {
			for _, limit := range []int{1, 2, 5, len(want), len(want) + 1} {
				t.Run(fmt.Sprintf("%s %s pages of %d", f.name, dir.name, limit), func(t *testing.T) {
					q := f.q
					q.Limit, q.OldestFirst = limit, dir.oldest
					var got []telemetry.LogLine
					for pages := 0; ; pages++ {
						if pages > len(want)+1 {
							t.Fatalf("paging does not end; read so far %d lines", len(got))
						}
						page, err := s.Logs(ctx, dev, q)
						if err != nil {
							t.Fatalf("Logs page %d: %v", pages, err)
						}
						if len(page) > limit {
							t.Fatalf("page %d has %d lines, limit %d", pages, len(page), limit)
						}
						got = append(got, page...)
						if len(page) < limit {
							break
						}
						q.After = page[len(page)-1].Cursor()
					}
					assertEqual(t, normLogs(got), normLogs(dir.want))
				})
			}
		}
	}
}

// The text filter is a substring that ignores case, and the characters
// that are patterns to LIKE match only themselves.
func testLogText(t *testing.T, s telemetry.Store) {
	ctx := t.Context()
	dev, org := uuid.New(), uuid.New()
	texts := []string{
		"Disk 100% full",      // 0
		"disk 1000 full",      // 1
		"user_id=7 LOGGED in", // 2
		"userXid=7 logged in", // 3
		`path C:\tmp\x`,       // 4
		"ÜBER straße",         // 5
		"nothing to see",      // 6
	}
	var lines []telemetry.LogLine
	for i, text := range texts {
		lines = append(lines, telemetry.LogLine{DeviceID: dev, OrgID: org, Service: "api", Seq: int64(i),
			TS: at(time.Duration(i) * time.Second), Stream: telemetry.StreamStderr, Line: text})
	}
	if err := s.WriteLogs(ctx, lines); err != nil {
		t.Fatalf("WriteLogs: %v", err)
	}
	tests := []struct {
		contains string
		want     []int // newest first
	}{
		{"100%", []int{0}},
		{"0% f", []int{0}},
		{"%", []int{0}},
		{"user_id", []int{2}},
		{"_", []int{2}},
		{"logged IN", []int{3, 2}},
		{"DISK", []int{1, 0}},
		{`C:\tmp`, []int{4}},
		{`\`, []int{4}},
		{"über", []int{5}},
		{"missing", nil},
	}
	for _, tc := range tests {
		t.Run(tc.contains, func(t *testing.T) {
			got, err := s.Logs(ctx, dev, telemetry.LogQuery{Contains: tc.contains, Limit: 100})
			if err != nil {
				t.Fatalf("Logs: %v", err)
			}
			var want []telemetry.LogLine
			for _, i := range tc.want {
				want = append(want, lines[i])
			}
			assertEqual(t, normLogs(got), normLogs(want))
		})
	}
}

func testConnectivity(t *testing.T, s telemetry.Store) {
	ctx := t.Context()
	dev, other, org := uuid.New(), uuid.New(), uuid.New()
	ev := func(dev uuid.UUID, seq int64, event string, d time.Duration) telemetry.Connectivity {
		return telemetry.Connectivity{DeviceID: dev, OrgID: org, ConnectionSeq: seq, Event: event, At: at(d)}
	}
	var all []telemetry.Connectivity
	for seq := int64(1); seq <= 6; seq++ {
		start := time.Duration(seq) * time.Minute
		end := start + 30*time.Second
		switch seq {
		case 3: // a flapping connection, both events at one instant
			end = start
		case 4: // connects at the instant connection 3 ended
			start = 3 * time.Minute
		}
		all = append(all, ev(dev, seq, telemetry.EventConnected, start), ev(dev, seq, telemetry.EventDisconnected, end))
	}
	writes := [][]telemetry.Connectivity{
		all[:7],
		all[5:],
		all, // the whole history redelivered
		{all[8], all[8], all[9]},
		{ev(other, 1, telemetry.EventConnected, 0)},
	}
	for i, w := range writes {
		if err := s.WriteConnectivity(ctx, w); err != nil {
			t.Fatalf("WriteConnectivity #%d: %v", i, err)
		}
	}

	want := append([]telemetry.Connectivity(nil), all...)
	sort.Slice(want, func(i, j int) bool {
		a, b := want[i], want[j]
		if !a.At.Equal(b.At) {
			return a.At.After(b.At)
		}
		if a.ConnectionSeq != b.ConnectionSeq {
			return a.ConnectionSeq > b.ConnectionSeq
		}
		return a.Event > b.Event
	})

	for _, limit := range []int{1, 3, 5, len(all), 100} {
		t.Run(fmt.Sprintf("pages of %d", limit), func(t *testing.T) {
			var got []telemetry.Connectivity
			var before *telemetry.ConnectivityCursor
			for pages := 0; ; pages++ {
				if pages > len(all)+1 {
					t.Fatalf("paging does not end; read so far: %v", got)
				}
				page, err := s.Connectivity(ctx, dev, before, limit)
				if err != nil {
					t.Fatalf("Connectivity page %d: %v", pages, err)
				}
				if len(page) > limit {
					t.Fatalf("page %d has %d events, limit %d", pages, len(page), limit)
				}
				got = append(got, page...)
				if len(page) < limit {
					break
				}
				before = page[len(page)-1].Cursor()
			}
			assertEqual(t, normConns(got), normConns(want))
		})
	}

	t.Run("cursor without event skips the whole connection instant", func(t *testing.T) {
		// Both events of connection 3 are at 3m; connection 4 connected then too.
		got, err := s.Connectivity(ctx, dev, &telemetry.ConnectivityCursor{At: at(3 * time.Minute), ConnectionSeq: 3}, 100)
		if err != nil {
			t.Fatalf("Connectivity: %v", err)
		}
		var rest []telemetry.Connectivity
		for _, c := range want {
			if c.At.Before(at(3*time.Minute)) || (c.At.Equal(at(3*time.Minute)) && c.ConnectionSeq < 3) {
				rest = append(rest, c)
			}
		}
		assertEqual(t, normConns(got), normConns(rest))
	})
}

func testUpdateEvents(t *testing.T, s telemetry.Store) {
	ctx := t.Context()
	dev, other, org := uuid.New(), uuid.New(), uuid.New()
	release := uuid.NullUUID{UUID: uuid.New(), Valid: true}
	pct := func(p int) *int { return &p }
	ev := func(dev uuid.UUID, d time.Duration, typ string) telemetry.UpdateEvent {
		return telemetry.UpdateEvent{DeviceID: dev, OrgID: org, ID: uuid.New(), TS: at(d), ReceivedAt: at(d + 250*time.Millisecond),
			Type: typ, ReleaseID: release}
	}
	var all []telemetry.UpdateEvent
	for i := range 4 {
		d := time.Duration(i) * time.Minute
		start := ev(dev, d, telemetry.UpdateDownloadStarted)
		start.Service = "api"
		zero := ev(dev, d, telemetry.UpdateDownloadProgress) // same instant as start
		zero.Service, zero.Progress = "api", pct(0)
		half := ev(dev, d+time.Second, telemetry.UpdateDownloadProgress)
		half.Service, half.Progress = "api", pct(50)
		failed := ev(dev, d+2*time.Second, telemetry.UpdateFailed)
		failed.Error, failed.ReleaseID = "no space left on device", uuid.NullUUID{}
		all = append(all, start, zero, half, failed)
	}
	// One instant shared by many events, so the id breaks most ties.
	for range 5 {
		all = append(all, ev(dev, time.Hour, telemetry.UpdateInstalled))
	}
	// Another device reusing one of dev's ids must not hide dev's event,
	// nor be hidden.
	reused := ev(other, 0, telemetry.UpdateInstalled)
	reused.ID = all[0].ID
	writes := [][]telemetry.UpdateEvent{
		all[:6],
		all[3:9],
		all, // everything redelivered
		{all[10], all[10], all[11]},
		{reused},
		// A copy received later (even one that says something else) does
		// not replace the event received first.
		{func() telemetry.UpdateEvent {
			e := all[1]
			e.ReceivedAt, e.Error = e.ReceivedAt.Add(time.Minute), "changed"
			return e
		}()},
	}
	for i, w := range writes {
		if err := s.WriteUpdateEvents(ctx, w); err != nil {
			t.Fatalf("WriteUpdateEvents #%d: %v", i, err)
		}
	}
	order := func(evs []telemetry.UpdateEvent) []telemetry.UpdateEvent {
		out := slices.Clone(evs)
		sort.Slice(out, func(i, j int) bool {
			a, b := out[i], out[j]
			if !a.TS.Equal(b.TS) {
				return a.TS.After(b.TS)
			}
			return a.ID.String() > b.ID.String()
		})
		return out
	}
	want := order(all)

	for _, limit := range []int{1, 2, 4, len(all), 100} {
		t.Run(fmt.Sprintf("pages of %d", limit), func(t *testing.T) {
			var got []telemetry.UpdateEvent
			var after *telemetry.UpdateEventCursor
			for pages := 0; ; pages++ {
				if pages > len(all)+1 {
					t.Fatalf("paging does not end; read so far: %d events", len(got))
				}
				page, err := s.UpdateEvents(ctx, dev, time.Time{}, time.Time{}, after, limit)
				if err != nil {
					t.Fatalf("UpdateEvents page %d: %v", pages, err)
				}
				if len(page) > limit {
					t.Fatalf("page %d has %d events, limit %d", pages, len(page), limit)
				}
				got = append(got, page...)
				if len(page) < limit {
					break
				}
				after = page[len(page)-1].Cursor()
			}
			assertEqual(t, normUpdates(got), normUpdates(want))
		})
	}

	t.Run("range", func(t *testing.T) {
		since, until := at(time.Minute), at(2*time.Minute+time.Second)
		got, err := s.UpdateEvents(ctx, dev, since, until, nil, 100)
		if err != nil {
			t.Fatalf("UpdateEvents: %v", err)
		}
		var in []telemetry.UpdateEvent
		for _, e := range want {
			if !e.TS.Before(since) && e.TS.Before(until) {
				in = append(in, e)
			}
		}
		if len(in) != 6 {
			t.Fatalf("the test's range holds %d events, want 6", len(in))
		}
		assertEqual(t, normUpdates(got), normUpdates(in))
	})

	t.Run("other device", func(t *testing.T) {
		got, err := s.UpdateEvents(ctx, other, time.Time{}, time.Time{}, nil, 100)
		if err != nil {
			t.Fatalf("UpdateEvents: %v", err)
		}
		assertEqual(t, normUpdates(got), normUpdates([]telemetry.UpdateEvent{reused}))
	})
}

// seriesSample is one sample of testSeries, as the test writes it.
type seriesSample struct {
	name  string
	ts    time.Time
	value float64
	unit  string
}

func testSeries(t *testing.T, s telemetry.Store) {
	ctx := t.Context()
	dev, other, org := uuid.New(), uuid.New(), uuid.New()
	// A day starting at midnight UTC, so steps of a minute, an hour and a
	// day all start at the epoch's multiples within it.
	day := time.Date(2025, 6, 2, 0, 0, 0, 0, time.UTC)
	var samples []seriesSample
	// cpu: every 7.5 s for two hours, values in quarters (exact sums), so
	// steps of 30 s see 4 samples and start exactly on one.
	for i := range 960 {
		samples = append(samples, seriesSample{"cpu.load", day.Add(time.Duration(i) * 7500 * time.Millisecond),
			float64((i*37)%101) / 4, "%"})
	}
	// temp: irregular, with ties at one instant (the step's last value is
	// the largest of the newest instant's), samples exactly on step
	// boundaries and a microsecond before them, and a unit that changes.
	tempAt := []time.Duration{0, time.Microsecond, 59*time.Second + 999999*time.Microsecond, time.Minute, time.Minute,
		time.Minute, 90 * time.Second, 3 * time.Minute, 3*time.Minute + 30*time.Second, 3*time.Minute + 30*time.Second,
		time.Hour - time.Microsecond, time.Hour}
	tempVal := []float64{40, -2.5, 41.25, 39, 45.5, 42, 38, 50, 12, 11, 60.75, 61}
	for i, d := range tempAt {
		unit := "C"
		if d >= time.Hour {
			unit = "K"
		}
		samples = append(samples, seriesSample{"cpu.temperature", day.Add(d), tempVal[i], unit})
	}
	var batch []telemetry.Sample
	for _, x := range samples {
		batch = append(batch, telemetry.Sample{DeviceID: dev, OrgID: org, TS: x.ts, Name: x.name, Value: x.value, Unit: x.unit})
	}
	// Noise: another device's cpu.load, and a name that only shares a prefix.
	batch = append(batch,
		telemetry.Sample{DeviceID: other, OrgID: org, TS: day, Name: "cpu.load", Value: 1000, Unit: "%"},
		telemetry.Sample{DeviceID: dev, OrgID: org, TS: day, Name: "cpu.load.avg", Value: 1000, Unit: "%"})
	// Written in shuffled batches, as a reconnecting device's arrive.
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
	for len(batch) > 0 {
		n := min(len(batch), 100)
		if err := s.WriteSamples(ctx, batch[:n]); err != nil {
			t.Fatalf("WriteSamples: %v", err)
		}
		batch = batch[n:]
	}

	// The expectations below are computed; this one, worked by hand, checks
	// the computation: boundaries a microsecond apart, and the tie at 3m30s.
	hand := []telemetry.Point{
		{Start: day, Count: 3, Min: -2.5, Max: 41.25, Avg: (40 - 2.5 + 41.25) / 3, Last: 41.25},
		{Start: day.Add(time.Minute), Count: 4, Min: 38, Max: 45.5, Avg: (39 + 45.5 + 42 + 38) / 4, Last: 38},
		{Start: day.Add(3 * time.Minute), Count: 3, Min: 11, Max: 50, Avg: (50 + 12 + 11) / 3.0, Last: 12},
	}
	if got := expectSeries(samples, []string{"cpu.temperature"}, day, day.Add(5*time.Minute), time.Minute); !reflect.DeepEqual(got[0].Points, hand) {
		t.Fatalf("expectSeries = %+v, want %+v", got[0].Points, hand)
	}

	tests := []struct {
		name         string
		names        []string
		since, until time.Time
		step         time.Duration
	}{
		{"30s steps", []string{"cpu.load", "cpu.temperature"}, day, day.Add(2 * time.Hour), 30 * time.Second},
		{"minute steps, boundaries and ties", []string{"cpu.temperature"}, day, day.Add(2 * time.Hour), time.Minute},
		{"since inside a step", []string{"cpu.temperature", "cpu.load"}, day.Add(30 * time.Second), day.Add(time.Hour), time.Minute},
		{"until excludes its instant", []string{"cpu.temperature"}, day, day.Add(time.Hour), 7 * time.Minute},
		{"one step for everything", []string{"cpu.load"}, day, day.Add(24 * time.Hour), 24 * time.Hour},
		{"odd step", []string{"cpu.load"}, day.Add(17 * time.Second), day.Add(95 * time.Minute), 13 * time.Second},
		{"sub-second step", []string{"cpu.temperature"}, day, day.Add(2 * time.Minute), 250 * time.Millisecond},
		{"no samples in range", []string{"cpu.temperature", "disk.free"}, day.Add(3 * time.Hour), day.Add(4 * time.Hour), time.Minute},
		{"the same name twice", []string{"cpu.temperature", "cpu.temperature"}, day, day.Add(5 * time.Minute), time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Series(ctx, dev, tc.names, tc.since, tc.until, tc.step)
			if err != nil {
				t.Fatalf("Series: %v", err)
			}
			want := expectSeries(samples, tc.names, tc.since, tc.until, tc.step)
			if len(got) != len(want) {
				t.Fatalf("%d series, want %d", len(got), len(want))
			}
			for i := range want {
				g, w := got[i], want[i]
				if g.Name != w.Name || g.Unit != w.Unit || len(g.Points) != len(w.Points) {
					t.Errorf("series %d: %s in %q with %d points, want %s in %q with %d points",
						i, g.Name, g.Unit, len(g.Points), w.Name, w.Unit, len(w.Points))
					continue
				}
				for j := range w.Points {
					gp, wp := g.Points[j], w.Points[j]
					if !gp.Start.Equal(wp.Start) || gp.Start.Location() != time.UTC || gp.Count != wp.Count ||
						gp.Min != wp.Min || gp.Max != wp.Max || gp.Last != wp.Last || !near(gp.Avg, wp.Avg) {
						t.Errorf("%s point %d: got %+v, want %+v", w.Name, j, gp, wp)
					}
				}
			}
		})
	}
}

// expectSeries computes what Series must return from the samples written.
func expectSeries(samples []seriesSample, names []string, since, until time.Time, step time.Duration) []telemetry.Series {
	out := make([]telemetry.Series, len(names))
	for i, name := range names {
		out[i].Name = name
		type acc struct {
			p      telemetry.Point
			sum    float64
			lastTS time.Time
		}
		steps := map[int64]*acc{}
		var newest time.Time
		for _, x := range samples {
			if x.name != name || x.ts.Before(since) || !x.ts.Before(until) {
				continue
			}
			us := x.ts.UnixMicro()
			stepUS := step.Microseconds()
			k := us / stepUS // every time here is after the epoch
			a := steps[k]
			if a == nil {
				a = &acc{p: telemetry.Point{Start: time.UnixMicro(k * stepUS).UTC(), Min: math.Inf(1), Max: math.Inf(-1)}}
				steps[k] = a
			}
			a.p.Count++
			a.sum += x.value
			a.p.Min, a.p.Max = min(a.p.Min, x.value), max(a.p.Max, x.value)
			if x.ts.After(a.lastTS) || (x.ts.Equal(a.lastTS) && x.value > a.p.Last) || a.p.Count == 1 {
				a.p.Last, a.lastTS = x.value, x.ts
			}
			if !x.ts.Before(newest) {
				newest, out[i].Unit = x.ts, x.unit
			}
		}
		for _, k := range slices.Sorted(maps.Keys(steps)) {
			a := steps[k]
			a.p.Avg = a.sum / float64(a.p.Count)
			out[i].Points = append(out[i].Points, a.p)
		}
	}
	return out
}

func near(a, b float64) bool {
	return math.Abs(a-b) <= 1e-9*max(1, math.Abs(a), math.Abs(b))
}

// Series refuses what has no answer rather than guessing one.
func testSeriesArguments(t *testing.T, s telemetry.Store) {
	ctx, dev := t.Context(), uuid.New()
	t0 := at(0)
	tests := []struct {
		name         string
		names        []string
		since, until time.Time
		step         time.Duration
	}{
		{"no names", nil, t0, t0.Add(time.Hour), time.Minute},
		{"zero until", []string{"cpu.load"}, t0, time.Time{}, time.Minute},
		{"empty range", []string{"cpu.load"}, t0, t0, time.Minute},
		{"reversed range", []string{"cpu.load"}, t0, t0.Add(-time.Second), time.Minute},
		{"zero step", []string{"cpu.load"}, t0, t0.Add(time.Hour), 0},
		{"negative step", []string{"cpu.load"}, t0, t0.Add(time.Hour), -time.Minute},
	}
	for _, tc := range tests {
		if _, err := s.Series(ctx, dev, tc.names, tc.since, tc.until, tc.step); err == nil {
			t.Errorf("%s: Series succeeded", tc.name)
		}
	}
	// The zero time is an instant like any other here, and the widest
	// range a request can name works in steps of a century.
	far := time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC)
	got, err := s.Series(ctx, dev, []string{"cpu.load"}, time.Time{}, far, 100*365*24*time.Hour)
	if err != nil || len(got) != 1 || len(got[0].Points) != 0 {
		t.Errorf("Series over years 1 to 9999 = %+v, %v; want one empty series", got, err)
	}
}

func testMetricNames(t *testing.T, s telemetry.Store) {
	ctx := t.Context()
	dev, other, silent, org := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	sample := func(dev uuid.UUID, name string, d time.Duration, unit string) telemetry.Sample {
		return telemetry.Sample{DeviceID: dev, OrgID: org, TS: at(d), Name: name, Value: 1, Unit: unit}
	}
	var batch []telemetry.Sample
	for i := range 50 {
		batch = append(batch, sample(dev, "cpu.load", time.Duration(i)*time.Second, "%"))
	}
	batch = append(batch,
		sample(dev, "mem.used", time.Minute, "B"),
		sample(dev, "mem.used", 2*time.Minute, "MB"), // the unit changed: the newest wins
		sample(dev, "mem.used", time.Minute+30*time.Second, "kB"),
		sample(dev, "uptime", -time.Hour, ""),
		sample(dev, "cpu", 0, "x"),  // a prefix of another name
		sample(dev, "cpu_a", 0, ""), // bytewise after cpu.load, before it in most locales
		sample(other, "disk.free", 0, "B"),
	)
	if err := s.WriteSamples(ctx, batch); err != nil {
		t.Fatalf("WriteSamples: %v", err)
	}
	got, err := s.MetricNames(ctx, dev)
	if err != nil {
		t.Fatalf("MetricNames: %v", err)
	}
	want := []telemetry.Metric{
		{Name: "cpu", Unit: "x", LastTS: at(0)},
		{Name: "cpu.load", Unit: "%", LastTS: at(49 * time.Second)},
		{Name: "cpu_a", Unit: "", LastTS: at(0)},
		{Name: "mem.used", Unit: "MB", LastTS: at(2 * time.Minute)},
		{Name: "uptime", Unit: "", LastTS: at(-time.Hour)},
	}
	assertEqual(t, got, want)

	if got, err := s.MetricNames(ctx, silent); err != nil || len(got) != 0 {
		t.Errorf("MetricNames of a device without samples = %v, %v; want none", got, err)
	}
}

func testDeleteBefore(t *testing.T, s telemetry.Store) {
	ctx := t.Context()
	dev, org := uuid.New(), uuid.New()
	// Midnight, with old rows on earlier days: a store that retains by
	// dropping daily partitions must give the same answer as one that
	// deletes rows. The other tests' data is all years after cutoff.
	cutoff := time.Date(2001, 2, 3, 0, 0, 0, 0, time.UTC)
	offsets := []struct {
		d   time.Duration
		old bool
	}{
		{-48 * time.Hour, true},
		{-time.Microsecond, true},
		{0, false}, // exactly at the cutoff is not older than it
		{time.Hour, false},
	}
	var wantOld int64
	for i, o := range offsets {
		ts := cutoff.Add(o.d)
		if err := s.WriteSamples(ctx, []telemetry.Sample{{DeviceID: dev, OrgID: org, TS: ts, Name: "uptime", Value: float64(i)}}); err != nil {
			t.Fatalf("WriteSamples: %v", err)
		}
		if err := s.WriteLogs(ctx, []telemetry.LogLine{{DeviceID: dev, OrgID: org, Service: "api", Seq: int64(i), TS: ts,
			Stream: telemetry.StreamStdout, Line: "x"}}); err != nil {
			t.Fatalf("WriteLogs: %v", err)
		}
		if err := s.WriteConnectivity(ctx, []telemetry.Connectivity{{DeviceID: dev, OrgID: org, ConnectionSeq: int64(i),
			Event: telemetry.EventConnected, At: ts}}); err != nil {
			t.Fatalf("WriteConnectivity: %v", err)
		}
		if err := s.WriteUpdateEvents(ctx, []telemetry.UpdateEvent{{DeviceID: dev, OrgID: org, ID: uuid.New(), TS: ts,
			ReceivedAt: ts, Type: telemetry.UpdateInstalled}}); err != nil {
			t.Fatalf("WriteUpdateEvents: %v", err)
		}
		if o.old {
			wantOld += 4
		}
	}

	n, err := s.DeleteBefore(ctx, cutoff)
	if err != nil {
		t.Fatalf("DeleteBefore: %v", err)
	}
	if n != wantOld {
		t.Errorf("DeleteBefore = %d, want %d", n, wantOld)
	}

	var wantTimes []time.Time
	for i := len(offsets) - 1; i >= 0; i-- {
		if !offsets[i].old {
			wantTimes = append(wantTimes, cutoff.Add(offsets[i].d))
		}
	}
	samples, err := s.Samples(ctx, dev, "uptime", time.Time{}, time.Time{}, 100)
	if err != nil {
		t.Fatalf("Samples: %v", err)
	}
	logs, err := s.Logs(ctx, dev, telemetry.LogQuery{Limit: 100})
	if err != nil {
		t.Fatalf("Logs: %v", err)
	}
	conns, err := s.Connectivity(ctx, dev, nil, 100)
	if err != nil {
		t.Fatalf("Connectivity: %v", err)
	}
	updates, err := s.UpdateEvents(ctx, dev, time.Time{}, time.Time{}, nil, 100)
	if err != nil {
		t.Fatalf("UpdateEvents: %v", err)
	}
	remaining := map[string][]time.Time{}
	for _, x := range samples {
		remaining["samples"] = append(remaining["samples"], x.TS.UTC())
	}
	for _, x := range logs {
		remaining["logs"] = append(remaining["logs"], x.TS.UTC())
	}
	for _, x := range conns {
		remaining["connectivity"] = append(remaining["connectivity"], x.At.UTC())
	}
	for _, x := range updates {
		remaining["update events"] = append(remaining["update events"], x.TS.UTC())
	}
	for _, kind := range []string{"samples", "logs", "connectivity", "update events"} {
		if !reflect.DeepEqual(remaining[kind], wantTimes) {
			t.Errorf("%s left after DeleteBefore(%s): %v, want %v", kind, cutoff, remaining[kind], wantTimes)
		}
	}

	if n, err := s.DeleteBefore(ctx, cutoff); err != nil || n != 0 {
		t.Errorf("second DeleteBefore = %d, %v; want 0, nil", n, err)
	}
}

func testEmptyWrites(t *testing.T, s telemetry.Store) {
	// A canceled context makes any round trip fail, so success shows the
	// store did not make one.
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	tests := []struct {
		name  string
		write func(context.Context) error
	}{
		{"nil samples", func(ctx context.Context) error { return s.WriteSamples(ctx, nil) }},
		{"empty samples", func(ctx context.Context) error { return s.WriteSamples(ctx, []telemetry.Sample{}) }},
		{"nil logs", func(ctx context.Context) error { return s.WriteLogs(ctx, nil) }},
		{"empty logs", func(ctx context.Context) error { return s.WriteLogs(ctx, []telemetry.LogLine{}) }},
		{"nil connectivity", func(ctx context.Context) error { return s.WriteConnectivity(ctx, nil) }},
		{"empty connectivity", func(ctx context.Context) error {
			return s.WriteConnectivity(ctx, []telemetry.Connectivity{})
		}},
		{"nil update events", func(ctx context.Context) error { return s.WriteUpdateEvents(ctx, nil) }},
		{"empty update events", func(ctx context.Context) error {
			return s.WriteUpdateEvents(ctx, []telemetry.UpdateEvent{})
		}},
	}
	for _, tc := range tests {
		if err := tc.write(canceled); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if err := tc.write(t.Context()); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	// The store started empty, so deleting everything counts what the empty
	// writes stored.
	if n, err := s.DeleteBefore(t.Context(), time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)); err != nil || n != 0 {
		t.Errorf("rows stored by empty writes: %d (err %v), want 0", n, err)
	}
}

func testNonPositiveLimit(t *testing.T, s telemetry.Store) {
	ctx, dev := t.Context(), uuid.New()
	for _, limit := range []int{0, -1} {
		reads := []struct {
			name string
			read func() error
		}{
			{"Samples", func() error {
				_, err := s.Samples(ctx, dev, "cpu.temperature", time.Time{}, time.Time{}, limit)
				return err
			}},
			{"Logs", func() error { _, err := s.Logs(ctx, dev, telemetry.LogQuery{Limit: limit}); return err }},
			{"Connectivity", func() error { _, err := s.Connectivity(ctx, dev, nil, limit); return err }},
			{"UpdateEvents", func() error {
				_, err := s.UpdateEvents(ctx, dev, time.Time{}, time.Time{}, nil, limit)
				return err
			}},
		}
		for _, r := range reads {
			if err := r.read(); err == nil {
				t.Errorf("%s with limit %d: no error", r.name, limit)
			}
		}
	}
}

func testPing(t *testing.T, s telemetry.Store) {
	if err := s.Ping(t.Context()); err != nil {
		t.Fatalf("Ping: %v", err)
	}
}

// The norm* helpers put values in the form the contract promises, so that
// reflect.DeepEqual compares meaning: UTC times, nil for empty labels, and
// nil for an empty result.

func normSamples(in []telemetry.Sample) []telemetry.Sample {
	if len(in) == 0 {
		return nil
	}
	out := make([]telemetry.Sample, len(in))
	for i, x := range in {
		x.TS = x.TS.UTC()
		if len(x.Labels) == 0 {
			x.Labels = nil
		}
		out[i] = x
	}
	return out
}

func normLogs(in []telemetry.LogLine) []telemetry.LogLine {
	if len(in) == 0 {
		return nil
	}
	out := make([]telemetry.LogLine, len(in))
	for i, x := range in {
		x.TS = x.TS.UTC()
		out[i] = x
	}
	return out
}

func normUpdates(in []telemetry.UpdateEvent) []telemetry.UpdateEvent {
	if len(in) == 0 {
		return nil
	}
	out := make([]telemetry.UpdateEvent, len(in))
	for i, x := range in {
		x.TS, x.ReceivedAt = x.TS.UTC(), x.ReceivedAt.UTC()
		out[i] = x
	}
	return out
}

func normConns(in []telemetry.Connectivity) []telemetry.Connectivity {
	if len(in) == 0 {
		return nil
	}
	out := make([]telemetry.Connectivity, len(in))
	for i, x := range in {
		x.At = x.At.UTC()
		out[i] = x
	}
	return out
}

func assertEqual[T any](t *testing.T, got, want []T) {
	t.Helper()
	if reflect.DeepEqual(got, want) {
		return
	}
	t.Errorf("got %d rows, want %d", len(got), len(want))
	for i := range max(len(got), len(want)) {
		var g, w any = "(none)", "(none)"
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		mark := " "
		if !reflect.DeepEqual(g, w) {
			mark = "≠"
		}
		t.Errorf("%s %d: got  %+v\n      want %+v", mark, i, g, w)
	}
}

// BenchmarkWriteSamples writes batches of 500 samples of 50 devices, each
// batch a new second, and reports samples/s.
func BenchmarkWriteSamples(b *testing.B, s telemetry.Store) {
	org := uuid.New()
	devices := make([]uuid.UUID, 50)
	for i := range devices {
		devices[i] = uuid.New()
	}
	names := []string{"cpu.temperature", "cpu.load", "mem.used", "disk.free", "net.rx_bytes",
		"net.tx_bytes", "gpu.temperature", "fan.rpm", "power.watts", "uptime"}
	const batchSize = 500
	batch := make([]telemetry.Sample, batchSize)
	for i := range batch {
		batch[i] = telemetry.Sample{DeviceID: devices[i%len(devices)], OrgID: org, Name: names[i/len(devices)%len(names)],
			Unit: "x", Labels: map[string]string{"core": fmt.Sprint(i % 4)}}
	}
	start := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	written := 0
	for b.Loop() {
		// Each round is a new instant, as a fleet reporting every second is.
		ts := start.Add(time.Duration(written/batchSize) * time.Second)
		for i := range batch {
			batch[i].TS, batch[i].Value = ts, float64(written+i)
		}
		if err := s.WriteSamples(b.Context(), batch); err != nil {
			b.Fatal(err)
		}
		written += batchSize
	}
	b.ReportMetric(float64(written)/b.Elapsed().Seconds(), "samples/s")
}

// BenchmarkSeries reads a day of one device's samples (ten metrics, one
// sample each per second: 864,000 rows among another device's as many)
// aggregated as a dashboard asks: an hour in 60 steps and the whole day in
// 1,000-point series (step 87 s).
func BenchmarkSeries(b *testing.B, s telemetry.Store) {
	ctx := b.Context()
	dev, other, org := uuid.New(), uuid.New(), uuid.New()
	day := time.Date(2025, 6, 3, 0, 0, 0, 0, time.UTC)
	names := []string{"cpu.temperature", "cpu.load", "mem.used", "disk.free", "net.rx_bytes",
		"net.tx_bytes", "gpu.temperature", "fan.rpm", "power.watts", "uptime"}
	batch := make([]telemetry.Sample, 0, 10_000)
	for sec := range 86400 {
		for i, n := range names {
			for _, d := range []uuid.UUID{dev, other} {
				batch = append(batch, telemetry.Sample{DeviceID: d, OrgID: org, TS: day.Add(time.Duration(sec) * time.Second),
					Name: n, Value: float64(sec*(i+1)%1000) / 4, Unit: "x"})
			}
		}
		if len(batch) >= 10_000 || sec == 86399 {
			if err := s.WriteSamples(ctx, batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	for _, tc := range []struct {
		name         string
		metrics      int
		since, until time.Time
		step         time.Duration
	}{
		{"hour/1 metric/60 steps", 1, day.Add(12 * time.Hour), day.Add(13 * time.Hour), time.Minute},
		{"hour/10 metrics/60 steps", 10, day.Add(12 * time.Hour), day.Add(13 * time.Hour), time.Minute},
		{"day/1 metric/1000 steps", 1, day, day.Add(24 * time.Hour), 87 * time.Second},
		{"day/10 metrics/1000 steps", 10, day, day.Add(24 * time.Hour), 87 * time.Second},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				got, err := s.Series(ctx, dev, names[:tc.metrics], tc.since, tc.until, tc.step)
				if err != nil || len(got) != tc.metrics || len(got[0].Points) == 0 {
					b.Fatalf("Series = %d series, %v", len(got), err)
				}
			}
		})
	}
}
