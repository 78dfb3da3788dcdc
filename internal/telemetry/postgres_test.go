package telemetry_test

import (
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/telemetry"
	"github.com/flock-io/flock-api/internal/telemetry/telemetrytest"
	"github.com/flock-io/flock-api/internal/testutil/pgtest"
)

func TestPostgres(t *testing.T) {
	telemetrytest.Run(t, func(t *testing.T) telemetry.Store {
		return telemetry.NewPostgres(pgtest.Pool(t))
	})
}

// A batch is one statement, so a row the schema refuses takes the whole
// batch with it rather than leaving part of it stored.
func TestPostgresRejectsWholeBatch(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	s := telemetry.NewPostgres(pool)
	dev, org := uuid.New(), uuid.New()
	ts := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		write func() error
		table string
	}{
		{"log stream", func() error {
			return s.WriteLogs(t.Context(), []telemetry.LogLine{
				{DeviceID: dev, OrgID: org, Service: "api", Seq: 1, TS: ts, Stream: telemetry.StreamStdout, Line: "ok"},
				{DeviceID: dev, OrgID: org, Service: "api", Seq: 2, TS: ts, Stream: "stdin", Line: "bad"},
			})
		}, "device_logs"},
		{"connectivity event", func() error {
			return s.WriteConnectivity(t.Context(), []telemetry.Connectivity{
				{DeviceID: dev, OrgID: org, ConnectionSeq: 1, Event: telemetry.EventConnected, At: ts},
				{DeviceID: dev, OrgID: org, ConnectionSeq: 1, Event: "reconnected", At: ts},
			})
		}, "connectivity_events"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.write(); err == nil {
				t.Fatal("write with an invalid row succeeded")
			}
			var n int
			if err := pool.QueryRow(t.Context(), "SELECT count(*) FROM "+tc.table).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Fatalf("%d rows of the refused batch stored in %s", n, tc.table)
			}
		})
	}
}

func BenchmarkWriteSamples(b *testing.B) {
	telemetrytest.BenchmarkWriteSamples(b, telemetry.NewPostgres(pgtest.Pool(b)))
}

func BenchmarkSeries(b *testing.B) {
	telemetrytest.BenchmarkSeries(b, telemetry.NewPostgres(pgtest.Pool(b)))
}
