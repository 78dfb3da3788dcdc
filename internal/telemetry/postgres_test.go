package telemetry_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
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

// Store.Logs has no cursor yet, but DeviceLogList does, for the API's
// paginated listing: pages must cover every line once even where services
// share a (ts, seq) pair.
func TestDeviceLogListPages(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	s := telemetry.NewPostgres(pool)
	dev, org := uuid.New(), uuid.New()
	ts := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	var lines []telemetry.LogLine
	for i := range 4 {
		for _, svc := range []string{"api", "api-v2", "worker"} {
			lines = append(lines, telemetry.LogLine{DeviceID: dev, OrgID: org, Service: svc, Seq: int64(i),
				TS: ts.Add(time.Duration(i/2) * time.Second), Stream: telemetry.StreamStdout, Line: fmt.Sprint(svc, i)})
		}
	}
	if err := s.WriteLogs(t.Context(), lines); err != nil {
		t.Fatal(err)
	}
	want, err := s.Logs(t.Context(), dev, "", time.Time{}, 100)
	if err != nil || len(want) != len(lines) {
		t.Fatalf("Logs = %d lines, %v; want %d", len(want), err, len(lines))
	}

	q := db.New(pool)
	for _, limit := range []int32{1, 2, 5} {
		t.Run(fmt.Sprintf("pages of %d", limit), func(t *testing.T) {
			arg := db.DeviceLogListParams{DeviceID: dev, MaxRows: limit}
			var got []db.DeviceLog
			for range len(lines) + 1 {
				page, err := q.DeviceLogList(t.Context(), arg)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, page...)
				if len(page) < int(limit) {
					break
				}
				last := page[len(page)-1]
				arg.BeforeTs, arg.BeforeService, arg.BeforeSeq = &last.Ts, &last.Service, &last.Seq
			}
			if len(got) != len(want) {
				t.Fatalf("paged %d lines, want %d", len(got), len(want))
			}
			for i := range got {
				if got[i].Service != want[i].Service || got[i].Seq != want[i].Seq {
					t.Errorf("line %d = %s/%d, want %s/%d", i, got[i].Service, got[i].Seq, want[i].Service, want[i].Seq)
				}
			}
		})
	}
}

func BenchmarkWriteSamples(b *testing.B) {
	telemetrytest.BenchmarkWriteSamples(b, telemetry.NewPostgres(pgtest.Pool(b)))
}
