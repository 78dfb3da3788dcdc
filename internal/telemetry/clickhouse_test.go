package telemetry_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/telemetry"
	"github.com/flock-io/flock-api/internal/telemetry/telemetrytest"
)

func TestClickHouse(t *testing.T) {
	telemetrytest.Run(t, func(t *testing.T) telemetry.Store {
		s, _ := clickHouseStore(t)
		return s
	})
}

// clickHouseURL is the server the tests use, without a database.
func clickHouseURL() string {
	if u := os.Getenv("FLOCK_TEST_CLICKHOUSE_URL"); u != "" {
		return u
	}
	return "clickhouse://127.0.0.1:9000"
}

// clickHouseStore returns a store on a database of its own, dropped when the
// test ends, and a connection to that database for looking behind the store.
func clickHouseStore(tb testing.TB) (*telemetry.ClickHouse, driver.Conn) {
	tb.Helper()
	base := clickHouseURL()
	u, err := url.Parse(base)
	if err != nil {
		tb.Fatalf("FLOCK_TEST_CLICKHOUSE_URL %q: %v", base, err)
	}
	var suffix [6]byte
	rand.Read(suffix[:])
	u.Path = "/flock_test_" + hex.EncodeToString(suffix[:])
	db := u.Path[1:]

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := telemetry.NewClickHouse(ctx, u.String())
	if err != nil {
		tb.Fatalf("ClickHouse at %s: %v\n(start it with scripts/services.sh clickhouse, or point FLOCK_TEST_CLICKHOUSE_URL at one)", base, err)
	}
	opts, err := clickhouse.ParseDSN(u.String())
	if err != nil {
		tb.Fatal(err)
	}
	conn, err := clickhouse.Open(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		s.Close()
		// The test's context is canceled by now.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db); err != nil {
			tb.Errorf("drop test database %s: %v", db, err)
		}
		conn.Close()
	})
	return s, conn
}

func count(t *testing.T, conn driver.Conn, query string) uint64 {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(t.Context(), query).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// Reads must hide a redelivery even while it still sits in its own part,
// which is all the time until a merge that may never come.
func TestClickHouseHidesUnmergedDuplicates(t *testing.T) {
	t.Parallel()
	s, conn := clickHouseStore(t)
	for _, table := range []string{"device_logs", "connectivity_events"} {
		if err := conn.Exec(t.Context(), "SYSTEM STOP MERGES "+table); err != nil {
			t.Fatal(err)
		}
	}
	dev, org := uuid.New(), uuid.New()
	ts := time.Date(2025, 6, 1, 12, 0, 0, 1000, time.UTC)
	line := telemetry.LogLine{DeviceID: dev, OrgID: org, Service: "api", Seq: 7, TS: ts, Stream: telemetry.StreamStdout, Line: "x"}
	ev := telemetry.Connectivity{DeviceID: dev, OrgID: org, ConnectionSeq: 3, Event: telemetry.EventConnected, At: ts}
	for range 3 {
		if err := s.WriteLogs(t.Context(), []telemetry.LogLine{line}); err != nil {
			t.Fatal(err)
		}
		if err := s.WriteConnectivity(t.Context(), []telemetry.Connectivity{ev}); err != nil {
			t.Fatal(err)
		}
	}
	// The stored copies show the test sees what it means to.
	if n := count(t, conn, "SELECT count() FROM device_logs"); n != 3 {
		t.Fatalf("%d log rows stored, want 3 unmerged copies", n)
	}
	if n := count(t, conn, "SELECT count() FROM connectivity_events"); n != 3 {
		t.Fatalf("%d connectivity rows stored, want 3 unmerged copies", n)
	}
	logs, err := s.Logs(t.Context(), dev, telemetry.LogQuery{Limit: 10})
	if err != nil || len(logs) != 1 {
		t.Errorf("Logs = %v, %v; want the line once", logs, err)
	}
	conns, err := s.Connectivity(t.Context(), dev, nil, 10)
	if err != nil || len(conns) != 1 {
		t.Errorf("Connectivity = %v, %v; want the event once", conns, err)
	}
	// Midnight, so retention drops the partition: a mutation would wait for
	// the merges stopped above.
	next := time.Date(2025, 6, 2, 0, 0, 0, 0, time.UTC)
	if n, err := s.DeleteBefore(t.Context(), next); err != nil || n != 2 {
		t.Errorf("DeleteBefore = %d, %v; want 2 (each row once)", n, err)
	}
}

// The suite cuts at midnight, which drops whole partitions; a cutoff within
// a day has to delete part of one.
func TestClickHouseDeleteBeforeWithinADay(t *testing.T) {
	t.Parallel()
	s, conn := clickHouseStore(t)
	dev, org := uuid.New(), uuid.New()
	cut := time.Date(2024, 3, 10, 15, 4, 5, 678901000, time.UTC)
	times := []time.Time{
		cut.AddDate(0, 0, -2),      // a partition of its own, dropped
		cut.Add(-time.Microsecond), // cut's day, deleted
		cut,                        // kept
		cut.Add(time.Hour),         // kept
		time.Date(1969, 12, 31, 23, 0, 0, 0, time.UTC), // before the epoch, in day 0
	}
	var samples []telemetry.Sample
	var lines []telemetry.LogLine
	for i, ts := range times {
		samples = append(samples, telemetry.Sample{DeviceID: dev, OrgID: org, TS: ts, Name: "uptime", Value: float64(i)})
		lines = append(lines, telemetry.LogLine{DeviceID: dev, OrgID: org, Service: "api", Seq: int64(i), TS: ts,
			Stream: telemetry.StreamStderr, Line: "x"})
	}
	if err := s.WriteSamples(t.Context(), samples); err != nil {
		t.Fatal(err)
	}
	if err := s.WriteLogs(t.Context(), lines); err != nil {
		t.Fatal(err)
	}
	n, err := s.DeleteBefore(t.Context(), cut)
	if err != nil || n != 6 {
		t.Fatalf("DeleteBefore = %d, %v; want 6", n, err)
	}
	got, err := s.Samples(t.Context(), dev, "uptime", time.Time{}, time.Time{}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].TS.Equal(times[3]) || !got[1].TS.Equal(times[2]) {
		t.Errorf("samples left: %v, want those at %s and %s", got, times[3], times[2])
	}
	if n := count(t, conn, "SELECT count() FROM device_logs"); n != 2 {
		t.Errorf("%d log rows left, want 2", n)
	}
	if n, err := s.DeleteBefore(t.Context(), cut); err != nil || n != 0 {
		t.Errorf("second DeleteBefore = %d, %v; want 0, nil", n, err)
	}
}

// A row the schema refuses takes its whole batch with it, as in PostgreSQL.
func TestClickHouseRejectsWholeBatch(t *testing.T) {
	t.Parallel()
	s, conn := clickHouseStore(t)
	dev, org := uuid.New(), uuid.New()
	ts := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	if err := s.WriteLogs(t.Context(), []telemetry.LogLine{
		{DeviceID: dev, OrgID: org, Service: "api", Seq: 1, TS: ts, Stream: telemetry.StreamStdout, Line: "ok"},
		{DeviceID: dev, OrgID: org, Service: "api", Seq: 2, TS: ts, Stream: "stdin", Line: "bad"},
	}); err == nil {
		t.Error("WriteLogs with stream stdin succeeded")
	}
	if err := s.WriteConnectivity(t.Context(), []telemetry.Connectivity{
		{DeviceID: dev, OrgID: org, ConnectionSeq: 1, Event: telemetry.EventConnected, At: ts},
		{DeviceID: dev, OrgID: org, ConnectionSeq: 1, Event: "reconnected", At: ts},
	}); err == nil {
		t.Error("WriteConnectivity with event reconnected succeeded")
	}
	for _, table := range []string{"device_logs", "connectivity_events"} {
		if n := count(t, conn, "SELECT count() FROM "+table); n != 0 {
			t.Errorf("%d rows of a refused batch stored in %s", n, table)
		}
	}
	// The store is still usable: a refused batch gives its connection back.
	if err := s.Ping(t.Context()); err != nil {
		t.Errorf("Ping after refused batches: %v", err)
	}
}

// Starting twice on one database finds the tables there.
func TestClickHouseSchemaIsIdempotent(t *testing.T) {
	t.Parallel()
	s, conn := clickHouseStore(t)
	var db string
	if err := conn.QueryRow(t.Context(), "SELECT currentDatabase()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(clickHouseURL())
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + db
	again, err := telemetry.NewClickHouse(t.Context(), u.String())
	if err != nil {
		t.Fatalf("NewClickHouse on an existing database: %v", err)
	}
	defer again.Close()
	if err := s.Ping(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkClickHouseWriteSamples(b *testing.B) {
	s, _ := clickHouseStore(b)
	telemetrytest.BenchmarkWriteSamples(b, s)
}

func BenchmarkClickHouseSeries(b *testing.B) {
	s, _ := clickHouseStore(b)
	telemetrytest.BenchmarkSeries(b, s)
}
