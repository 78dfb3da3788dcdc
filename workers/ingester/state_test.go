package ingester_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/testutil"
	"github.com/flock-io/flock-api/workers/ingester"
)

// pgState is what PostgreSQL holds of a device's reported state.
type pgState struct {
	seq     *int64
	release uuid.NullUUID
	os      string
}

func (e *env) pgState(id uuid.UUID) pgState {
	e.t.Helper()
	var s pgState
	if err := e.pool.QueryRow(e.t.Context(), `SELECT reported_seq, running_release_id, os_version FROM devices WHERE id = $1`, id).
		Scan(&s.seq, &s.release, &s.os); err != nil {
		e.t.Fatal(err)
	}
	return s
}

// A state published over MQTT reaches the device's row (so the device
// list's running_release_id filter finds it), and HTTP and MQTT reports are
// one sequence: neither overwrites a newer state of the other.
func TestReportedStateReachesPostgreSQLInSeqOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	e.startIngester(ingester.Config{})
	id := e.addDevice()
	d := e.connect(id)
	relA, relB := uuid.New(), uuid.New()

	d.publish(t, "state", fmt.Sprintf(`{"seq":5,"running_release_id":%q,"os_version":"mqtt-5"}`, relA))
	testutil.Eventually(t, "MQTT state seq 5 in PostgreSQL", func() error {
		if s := e.pgState(id); s.seq == nil || *s.seq != 5 || s.release.UUID != relA || s.os != "mqtt-5" {
			return fmt.Errorf("row holds %+v", s)
		}
		return nil
	})

	// An HTTP report older than what MQTT reported is not applied; a newer
	// one is.
	q := db.New(e.pool)
	for _, c := range []struct {
		seq     int64
		applied int64
	}{{4, 0}, {5, 0}, {6, 1}} {
		n, err := q.DeviceReport(t.Context(), db.DeviceReportParams{ID: id, Seq: c.seq, Reported: fmt.Appendf(nil, `{"seq":%d}`, c.seq),
			RunningReleaseID: uuid.NullUUID{UUID: relB, Valid: true}, OsVersion: fmt.Sprint("http-", c.seq)})
		if err != nil || n != c.applied {
			t.Fatalf("HTTP report seq %d: applied %d (%v), want %d", c.seq, n, err, c.applied)
		}
	}

	// A late MQTT state (seq 5, redelivered or delayed) leaves HTTP's seq 6;
	// the next MQTT state (seq 7) applies. Within one batch the newest wins.
	d.publish(t, "state", fmt.Sprintf(`{"seq":5,"running_release_id":%q,"os_version":"mqtt-late"}`, relA))
	d.publish(t, "state", fmt.Sprintf(`{"seq":8,"running_release_id":%q,"os_version":"mqtt-8"}`, relA))
	d.publish(t, "state", fmt.Sprintf(`{"seq":7,"running_release_id":%q,"os_version":"mqtt-7"}`, relB))
	testutil.Eventually(t, "MQTT state seq 8 in PostgreSQL", func() error {
		s := e.pgState(id)
		switch {
		case s.seq == nil:
			return errors.New("no seq")
		case *s.seq == 6 && s.os == "http-6":
			return errors.New("still HTTP's seq 6")
		case *s.seq != 8 || s.os != "mqtt-8" || s.release.UUID != relA:
			return fmt.Errorf("row holds seq %d %q %s, want 8 mqtt-8 %s", *s.seq, s.os, s.release.UUID, relA)
		}
		return nil
	})
	// State without a release clears the column.
	d.publish(t, "state", `{"seq":9}`)
	testutil.Eventually(t, "MQTT state seq 9 in PostgreSQL", func() error {
		if s := e.pgState(id); s.seq == nil || *s.seq != 9 || s.release.Valid {
			return fmt.Errorf("row holds %+v", s)
		}
		return nil
	})
}
