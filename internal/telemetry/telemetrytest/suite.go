// Package telemetrytest is the conformance suite for telemetry.Store. The
// PostgreSQL store and the ClickHouse store run the identical checks, so the
// API returns the same answers whichever one a deployment uses.
package telemetrytest

import (
	"context"
	"fmt"
	"reflect"
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
		{"ConnectivityRedeliveredAndPaged", testConnectivity},
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
		name    string
		service string
		since   time.Time
		limit   int
		want    []telemetry.LogLine
	}{
		// Ties on ts go by service, then seq, both descending.
		{"every service", "", time.Time{}, 100, pick(5, 4, 3, 2, 1, 0)},
		{"one service", "api", time.Time{}, 100, pick(5, 4, 1, 0)},
		{"since is inclusive", "", at(time.Second), 100, pick(5, 4, 3, 2, 1)},
		{"service and since", "worker", at(2 * time.Second), 100, pick(3)},
		{"limit keeps the newest", "", time.Time{}, 3, pick(5, 4, 3)},
		{"unknown service", "db", time.Time{}, 100, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.Logs(ctx, dev, tc.service, tc.since, tc.limit)
			if err != nil {
				t.Fatalf("Logs: %v", err)
			}
			assertEqual(t, normLogs(got), normLogs(tc.want))
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
		if o.old {
			wantOld += 3
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
	logs, err := s.Logs(ctx, dev, "", time.Time{}, 100)
	if err != nil {
		t.Fatalf("Logs: %v", err)
	}
	conns, err := s.Connectivity(ctx, dev, nil, 100)
	if err != nil {
		t.Fatalf("Connectivity: %v", err)
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
	for _, kind := range []string{"samples", "logs", "connectivity"} {
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
			{"Logs", func() error { _, err := s.Logs(ctx, dev, "", time.Time{}, limit); return err }},
			{"Connectivity", func() error { _, err := s.Connectivity(ctx, dev, nil, limit); return err }},
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
