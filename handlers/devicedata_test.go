package handlers_test

import (
	"encoding/base64"
	"fmt"
	"math"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/handlers"
	"github.com/flock-io/flock-api/internal/http/pagination"
	"github.com/flock-io/flock-api/internal/telemetry"
	"github.com/flock-io/flock-api/internal/testutil/apptest"
)

// deviceDataEnv is a live server reading the PostgreSQL telemetry store the
// test writes to, with a world whose device the data belongs to.
func deviceDataEnv(t *testing.T) (*liveEnv, *world, telemetry.Store) {
	t.Helper()
	e := startLiveServer(t, liveOptions{deps: func(e *liveEnv, d *handlers.Deps) { d.Telemetry = telemetry.NewPostgres(e.pool) }})
	w := newWorld(t, e.srv).withFleet(t)
	return e, w, telemetry.NewPostgres(e.pool)
}

// wantInvalid checks that GET path is a 400 naming field.
func wantInvalid(t *testing.T, srv *apptest.Server, path, token, field string) {
	t.Helper()
	status, _, out := call(t, srv, "GET", path, token, nil)
	errs, _ := out["errors"].([]any)
	if status != 400 || out["code"] != "validation_failed" || len(errs) != 1 {
		t.Errorf("GET %s = %d %v, want 400 naming %s", path, status, out, field)
		return
	}
	if got := errs[0].(map[string]any)["field"]; got != field {
		t.Errorf("GET %s names %v, want %s: %v", path, got, field, out)
	}
}

func rfc(t time.Time) string { return url.QueryEscape(t.UTC().Format(time.RFC3339Nano)) }

func parseTS(t *testing.T, v any) time.Time {
	t.Helper()
	s, _ := v.(string)
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("time %v: %v", v, err)
	}
	return ts.UTC()
}

func TestDeviceTelemetryGet(t *testing.T) {
	e, w, store := deviceDataEnv(t)
	srv, dev, org := e.srv, w.device.id, uuid.MustParse(w.org)

	// Every 10 s for ten minutes from a minute boundary; values in quarters
	// so every sum is exact.
	t0 := time.Date(2026, 3, 1, 8, 0, 0, 0, time.UTC)
	type sample struct {
		ts time.Time
		v  float64
	}
	var cpu []sample
	var batch []telemetry.Sample
	for i := range 60 {
		s := sample{t0.Add(time.Duration(i) * 10 * time.Second), float64((i*29)%17) / 4}
		cpu = append(cpu, s)
		batch = append(batch, telemetry.Sample{DeviceID: dev, OrgID: org, TS: s.ts, Name: "cpu.temperature", Value: s.v, Unit: "C"})
	}
	batch = append(batch,
		telemetry.Sample{DeviceID: dev, OrgID: org, TS: t0.Add(90 * time.Second), Name: "mem.used", Value: 100, Unit: "MB"},
		telemetry.Sample{DeviceID: dev, OrgID: org, TS: t0.Add(5 * time.Minute), Name: "mem.used", Value: 300, Unit: "MB"},
		// Another device's sample, which must not show.
		telemetry.Sample{DeviceID: uuid.New(), OrgID: org, TS: t0, Name: "cpu.temperature", Value: 1e6, Unit: "C"},
	)
	if err := store.WriteSamples(t.Context(), batch); err != nil {
		t.Fatal(err)
	}
	base := "/v1/devices/" + dev.String() + "/telemetry"

	t.Run("steps", func(t *testing.T) {
		since, until := t0.Add(30*time.Second), t0.Add(8*time.Minute)
		out := must(t, srv, 200, "GET", fmt.Sprintf("%s?metric=cpu.temperature&metric=mem.used&since=%s&until=%s&step=2m",
			base, rfc(since), rfc(until)), w.viewer, nil)
		if out["step_seconds"] != float64(120) || !parseTS(t, out["since"]).Equal(since) || !parseTS(t, out["until"]).Equal(until) {
			t.Fatalf("range %v %v %v", out["since"], out["until"], out["step_seconds"])
		}
		series := out["series"].([]any)
		if len(series) != 2 {
			t.Fatalf("%d series", len(series))
		}
		// Expected cpu points: steps start on even minutes since the epoch;
		// the first holds only the samples from since on.
		type point struct {
			ts                  time.Time
			count               int
			min, max, avg, last float64
		}
		var want []point
		for _, s := range cpu {
			if s.ts.Before(since) || !s.ts.Before(until) {
				continue
			}
			start := s.ts.Truncate(2 * time.Minute)
			if len(want) == 0 || !want[len(want)-1].ts.Equal(start) {
				want = append(want, point{ts: start, min: math.Inf(1), max: math.Inf(-1)})
			}
			p := &want[len(want)-1]
			p.count++
			p.avg += s.v
			p.min, p.max, p.last = min(p.min, s.v), max(p.max, s.v), s.v
		}
		for i := range want {
			want[i].avg /= float64(want[i].count)
		}
		if len(want) != 4 || !want[0].ts.Equal(t0) || want[0].count != 9 {
			t.Fatalf("the test's own expectation is off: %+v", want)
		}
		cpuSeries := series[0].(map[string]any)
		if cpuSeries["metric"] != "cpu.temperature" || cpuSeries["unit"] != "C" {
			t.Errorf("series 0 = %v %v", cpuSeries["metric"], cpuSeries["unit"])
		}
		points := cpuSeries["points"].([]any)
		if len(points) != len(want) {
			t.Fatalf("%d cpu points, want %d: %v", len(points), len(want), points)
		}
		for i, p := range points {
			m := p.(map[string]any)
			got := point{parseTS(t, m["ts"]), int(m["count"].(float64)), m["min"].(float64), m["max"].(float64), m["avg"].(float64), m["last"].(float64)}
			if got.ts != want[i].ts || got.count != want[i].count || got.min != want[i].min || got.max != want[i].max ||
				got.last != want[i].last || math.Abs(got.avg-want[i].avg) > 1e-9 {
				t.Errorf("cpu point %d = %+v, want %+v", i, got, want[i])
			}
		}
		mem := series[1].(map[string]any)
		memPoints := mem["points"].([]any)
		if mem["metric"] != "mem.used" || mem["unit"] != "MB" || len(memPoints) != 2 {
			t.Fatalf("mem series %v", mem)
		}
		if m := memPoints[1].(map[string]any); !parseTS(t, m["ts"]).Equal(t0.Add(4*time.Minute)) || m["last"] != float64(300) || m["count"] != float64(1) {
			t.Errorf("mem point 1 = %v", m)
		}
	})

	t.Run("defaults", func(t *testing.T) {
		// until is now and since an hour before it; the step cuts that into
		// 60 (one minute). Nothing was sent in the last hour.
		out := must(t, srv, 200, "GET", base+"?metric=cpu.temperature", w.viewer, nil)
		since, until := parseTS(t, out["since"]), parseTS(t, out["until"])
		if until.Sub(since) != time.Hour || time.Since(until) > time.Minute || out["step_seconds"] != float64(60) {
			t.Errorf("defaults: [%s, %s) step %v", since, until, out["step_seconds"])
		}
		s := out["series"].([]any)[0].(map[string]any)
		if len(s["points"].([]any)) != 0 || s["unit"] != "" {
			t.Errorf("series of an idle hour = %v", s)
		}
		// Only until: since is an hour before it.
		out = must(t, srv, 200, "GET", fmt.Sprintf("%s?metric=cpu.temperature&until=%s", base, rfc(t0.Add(100*time.Minute))), w.viewer, nil)
		if out["step_seconds"] != float64(60) || !parseTS(t, out["since"]).Equal(t0.Add(40*time.Minute)) {
			t.Errorf("until only: since %v step %v", out["since"], out["step_seconds"])
		}
		out = must(t, srv, 200, "GET", fmt.Sprintf("%s?metric=cpu.temperature&since=%s&until=%s", base, rfc(t0), rfc(t0.Add(100*time.Minute))), w.viewer, nil)
		if out["step_seconds"] != float64(100) {
			t.Errorf("100 minutes: step %v, want 100", out["step_seconds"])
		}
		// A range that does not divide into whole seconds rounds up.
		out = must(t, srv, 200, "GET", fmt.Sprintf("%s?metric=cpu.temperature&since=%s&until=%s", base, rfc(t0), rfc(t0.Add(61*time.Second))), w.viewer, nil)
		if out["step_seconds"] != float64(2) {
			t.Errorf("61 s: step %v, want 2", out["step_seconds"])
		}
		out = must(t, srv, 200, "GET", fmt.Sprintf("%s?metric=cpu.temperature&since=%s&until=%s", base, rfc(t0), rfc(t0.Add(time.Second))), w.viewer, nil)
		if out["step_seconds"] != float64(1) {
			t.Errorf("1 s: step %v, want 1", out["step_seconds"])
		}
	})

	t.Run("bad input names the field", func(t *testing.T) {
		r := fmt.Sprintf("&since=%s&until=%s", rfc(t0), rfc(t0.Add(time.Hour)))
		for _, tc := range []struct{ query, field string }{
			{"metric=disk.free" + r, "metric"},
			{"metric=cpu.temperature&metric=disk.free" + r, "metric"},
			{fmt.Sprintf("metric=cpu.temperature&since=%s&until=%s", rfc(t0), rfc(t0)), "until"},
			{fmt.Sprintf("metric=cpu.temperature&since=%s&until=%s", rfc(t0), rfc(t0.Add(-time.Minute))), "until"},
			{fmt.Sprintf("metric=cpu.temperature&since=%s", rfc(time.Now().Add(time.Hour))), "until"},
			{"metric=cpu.temperature&step=1s" + r, "step"}, // 3600 points
			{fmt.Sprintf("metric=cpu.temperature&since=%s&until=%s&step=1s", rfc(t0), rfc(t0.Add(1000*time.Second+time.Microsecond))), "step"},
			{"metric=cpu.temperature&step=abc" + r, "step"},
			{"metric=cpu.temperature&step=1.5s" + r, "step"},
			{"metric=cpu.temperature&step=500ms" + r, "step"},
			{"metric=cpu.temperature&step=0s" + r, "step"},
			{"metric=cpu.temperature&step=-1m" + r, "step"},
			{"metric=cpu.temperature&step=10" + r, "step"},
		} {
			wantInvalid(t, srv, base+"?"+tc.query, w.viewer, tc.field)
		}
		// A range of ten thousand years takes the default step (a sixtieth
		// of it); with a step too short it is refused at once with a step
		// that would do, and that step is taken.
		long := fmt.Sprintf("%s?metric=cpu.temperature&since=0001-01-01T00:00:00Z&until=9999-12-31T00:00:00Z", base)
		must(t, srv, 200, "GET", long, w.viewer, nil)
		wantInvalid(t, srv, long+"&step=1h", w.viewer, "step")
		_, _, out := call(t, srv, "GET", long+"&step=1h", w.viewer, nil)
		var step string
		if _, err := fmt.Sscanf(out["detail"].(string)[strings.LastIndex(out["detail"].(string), ": a step of ")+len(": a step of "):], "%s", &step); err != nil {
			t.Fatalf("no step in %q: %v", out["detail"], err)
		}
		must(t, srv, 200, "GET", long+"&step="+step, w.viewer, nil)
		// 1000 points exactly is allowed, however the range meets the steps.
		must(t, srv, 200, "GET", fmt.Sprintf("%s?metric=cpu.temperature&since=%s&until=%s&step=1s", base, rfc(t0), rfc(t0.Add(1000*time.Second))), w.viewer, nil)
		wantInvalid(t, srv, fmt.Sprintf("%s?metric=cpu.temperature&since=%s&until=%s&step=1s", base,
			rfc(t0.Add(-time.Millisecond)), rfc(t0.Add(999*time.Second+time.Millisecond))), w.viewer, "step") // under 1000 s, 1001 steps
	})
}

func TestDeviceMetricList(t *testing.T) {
	e, w, store := deviceDataEnv(t)
	dev, org := w.device.id, uuid.MustParse(w.org)
	t0 := time.Date(2026, 3, 1, 8, 0, 0, 123456000, time.UTC)
	base := "/v1/devices/" + dev.String() + "/metrics"
	if m := must(t, e.srv, 200, "GET", base, w.viewer, nil)["metrics"].([]any); len(m) != 0 {
		t.Fatalf("metrics of a device that sent none = %v", m)
	}
	if err := store.WriteSamples(t.Context(), []telemetry.Sample{
		{DeviceID: dev, OrgID: org, TS: t0, Name: "mem.used", Value: 1, Unit: "B"},
		{DeviceID: dev, OrgID: org, TS: t0.Add(time.Minute), Name: "mem.used", Value: 1, Unit: "kB"},
		{DeviceID: dev, OrgID: org, TS: t0.Add(-time.Minute), Name: "cpu.load", Value: 1, Unit: "%"},
		{DeviceID: dev, OrgID: org, TS: t0, Name: "cpu_count", Value: 4},
		{DeviceID: uuid.New(), OrgID: org, TS: t0, Name: "disk.free", Value: 1},
	}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range must(t, e.srv, 200, "GET", base, w.viewer, nil)["metrics"].([]any) {
		m := m.(map[string]any)
		got = append(got, fmt.Sprintf("%v %v %s", m["name"], m["unit"], parseTS(t, m["last_ts"]).Format(time.RFC3339Nano)))
	}
	want := []string{
		"cpu.load % " + t0.Add(-time.Minute).Format(time.RFC3339Nano),
		"cpu_count  " + t0.Format(time.RFC3339Nano),
		"mem.used kB " + t0.Add(time.Minute).Format(time.RFC3339Nano),
	}
	if !slices.Equal(got, want) {
		t.Errorf("metrics\n%q\nwant\n%q", got, want)
	}
}

func TestDeviceLogList(t *testing.T) {
	e, w, store := deviceDataEnv(t)
	srv, dev, org := e.srv, w.device.id, uuid.MustParse(w.org)
	t0 := time.Date(2026, 3, 1, 8, 0, 0, 123456000, time.UTC)
	var lines []telemetry.LogLine
	for i := range 10 {
		for _, svc := range []string{"api", "worker", "db"} {
			lines = append(lines, telemetry.LogLine{DeviceID: dev, OrgID: org, Service: svc, Seq: int64(i + 1),
				TS: t0.Add(time.Duration(i/3) * time.Second), Stream: telemetry.StreamStdout,
				Line: fmt.Sprintf("%s: request %d took 100%% of_budget", svc, i)})
		}
	}
	lines[4].Stream, lines[4].Line = telemetry.StreamStderr, "worker: PANIC at the disco"
	other := lines[0]
	other.DeviceID = uuid.New()
	if err := store.WriteLogs(t.Context(), append(slices.Clone(lines), other)); err != nil {
		t.Fatal(err)
	}
	base := "/v1/devices/" + dev.String() + "/logs"
	key := func(m map[string]any) string { return fmt.Sprintf("%v/%v", m["service"], m["seq"]) }
	lineKey := func(l telemetry.LogLine) string { return fmt.Sprintf("%s/%d", l.Service, l.Seq) }
	// Newest first, ties by service then seq, both descending.
	order := func(ls []telemetry.LogLine) []string {
		ls = slices.Clone(ls)
		slices.SortFunc(ls, func(a, b telemetry.LogLine) int {
			if c := b.TS.Compare(a.TS); c != 0 {
				return c
			}
			if a.Service != b.Service {
				if a.Service > b.Service {
					return -1
				}
				return 1
			}
			return int(b.Seq - a.Seq)
		})
		out := make([]string, len(ls))
		for i, l := range ls {
			out[i] = lineKey(l)
		}
		return out
	}
	filter := func(keep func(telemetry.LogLine) bool) []string {
		var out []telemetry.LogLine
		for _, l := range lines {
			if keep(l) {
				out = append(out, l)
			}
		}
		return order(out)
	}

	for _, tc := range []struct {
		name, query string
		want        []string
	}{
		{"all", "", filter(func(telemetry.LogLine) bool { return true })},
		{"service", "service=worker", filter(func(l telemetry.LogLine) bool { return l.Service == "worker" })},
		{"range", fmt.Sprintf("since=%s&until=%s", rfc(t0.Add(time.Second)), rfc(t0.Add(3*time.Second))),
			filter(func(l telemetry.LogLine) bool { return l.TS.Sub(t0) >= time.Second && l.TS.Sub(t0) < 3*time.Second })},
		{"text ignores case", "q=panic", []string{"worker/2"}},
		{"text with wildcards", "q=" + url.QueryEscape("100% of_"), filter(func(l telemetry.LogLine) bool { return lineKey(l) != "worker/2" })},
		{"wildcards match only themselves", "q=" + url.QueryEscape("request _ took"), nil},
		{"text and service", "service=db&q=" + url.QueryEscape("REQUEST 9 "), []string{"db/10"}},
	} {
		for _, limit := range []int{1, 4, 50} {
			t.Run(fmt.Sprintf("%s/limit %d", tc.name, limit), func(t *testing.T) {
				var got []string
				q := fmt.Sprintf("%s?limit=%d&%s", base, limit, tc.query)
				for pages := 0; ; pages++ {
					if pages > len(lines)+1 {
						t.Fatal("paging does not end")
					}
					out := must(t, srv, 200, "GET", q, w.viewer, nil)
					items := out["items"].([]any)
					if len(items) > limit {
						t.Fatalf("%d items, limit %d", len(items), limit)
					}
					for _, it := range items {
						got = append(got, key(it.(map[string]any)))
					}
					next, ok := out["next_cursor"].(string)
					if !ok {
						break
					}
					q = fmt.Sprintf("%s?limit=%d&%s&cursor=%s", base, limit, tc.query, next)
				}
				if !slices.Equal(got, tc.want) {
					t.Errorf("lines\n%v\nwant\n%v", got, tc.want)
				}
			})
		}
	}

	t.Run("until the zero time", func(t *testing.T) {
		// The stores take the zero time for "no bound"; the API must not.
		if items := must(t, srv, 200, "GET", base+"?until=0001-01-01T00:00:00Z", w.viewer, nil)["items"].([]any); len(items) != 0 {
			t.Errorf("%d lines before year 1", len(items))
		}
		if items := must(t, srv, 200, "GET", base+"?since=0001-01-01T00:00:00Z", w.viewer, nil)["items"].([]any); len(items) != len(lines) {
			t.Errorf("%d lines since year 1, want %d", len(items), len(lines))
		}
	})

	t.Run("fields", func(t *testing.T) {
		out := must(t, srv, 200, "GET", base+"?q=disco", w.viewer, nil)
		m := out["items"].([]any)[0].(map[string]any)
		if m["service"] != "worker" || m["seq"] != float64(2) || m["stream"] != "stderr" || m["line"] != "worker: PANIC at the disco" ||
			!parseTS(t, m["ts"]).Equal(t0) {
			t.Errorf("line = %v", m)
		}
	})

	t.Run("bad input names the field", func(t *testing.T) {
		wantInvalid(t, srv, fmt.Sprintf("%s?since=%s&until=%s", base, rfc(t0), rfc(t0)), w.viewer, "until")
		wantInvalid(t, srv, fmt.Sprintf("%s?since=%s&until=%s", base, rfc(t0), rfc(t0.Add(-time.Second))), w.viewer, "until")
		for _, c := range []string{
			"bogus!",
			pagination.EncodeText("yesterday", "api", "1"),
			pagination.EncodeText(t0.Format(time.RFC3339Nano), "api"),
			pagination.EncodeText(t0.Format(time.RFC3339Nano), "api", "one"),
			base64.RawURLEncoding.EncodeToString([]byte{0xff, 0xfe, 0, 'x', 0, '1'}),
		} {
			wantInvalid(t, srv, base+"?cursor="+url.QueryEscape(c), w.viewer, "cursor")
		}
	})
}

func TestDeviceUpdateEventList(t *testing.T) {
	e, w, store := deviceDataEnv(t)
	srv, dev, org := e.srv, w.device.id, uuid.MustParse(w.org)
	t0 := time.Date(2026, 3, 1, 8, 0, 0, 123456000, time.UTC)
	release := uuid.New()
	zero := 0
	var events []telemetry.UpdateEvent
	for i := range 7 {
		ev := telemetry.UpdateEvent{DeviceID: dev, OrgID: org, ID: uuid.New(), TS: t0.Add(time.Duration(i/2) * time.Second),
			ReceivedAt: t0.Add(time.Duration(i/2)*time.Second + time.Millisecond), Type: telemetry.UpdateDownloadProgress,
			ReleaseID: uuid.NullUUID{UUID: release, Valid: true}, Service: "api", Progress: &zero}
		events = append(events, ev)
	}
	events[6].Type, events[6].Service, events[6].Progress, events[6].ReleaseID, events[6].Error =
		telemetry.UpdateFailed, "", nil, uuid.NullUUID{}, "no space left on device"
	if err := store.WriteUpdateEvents(t.Context(), events); err != nil {
		t.Fatal(err)
	}
	if err := store.WriteUpdateEvents(t.Context(), events[:3]); err != nil { // redelivered
		t.Fatal(err)
	}
	want := slices.Clone(events)
	slices.SortFunc(want, func(a, b telemetry.UpdateEvent) int {
		if c := b.TS.Compare(a.TS); c != 0 {
			return c
		}
		if a.ID.String() > b.ID.String() {
			return -1
		}
		return 1
	})
	var wantIDs []string
	for _, ev := range want {
		wantIDs = append(wantIDs, ev.ID.String())
	}
	base := "/v1/devices/" + dev.String() + "/update-events"

	for _, limit := range []int{1, 2, 3, 7, 8} {
		var got []string
		q := fmt.Sprintf("%s?limit=%d", base, limit)
		for pages := 0; ; pages++ {
			if pages > len(events)+1 {
				t.Fatal("paging does not end")
			}
			out := must(t, srv, 200, "GET", q, w.viewer, nil)
			for _, it := range out["items"].([]any) {
				got = append(got, it.(map[string]any)["id"].(string))
			}
			next, ok := out["next_cursor"].(string)
			if !ok {
				break
			}
			q = fmt.Sprintf("%s?limit=%d&cursor=%s", base, limit, next)
		}
		if !slices.Equal(got, wantIDs) {
			t.Errorf("limit %d: events\n%v\nwant\n%v", limit, got, wantIDs)
		}
	}

	items := must(t, srv, 200, "GET", fmt.Sprintf("%s?since=%s&until=%s", base, rfc(t0.Add(time.Second)), rfc(t0.Add(3*time.Second))), w.viewer, nil)["items"].([]any)
	if len(items) != 4 {
		t.Errorf("range holds %d events, want 4", len(items))
	}
	all := must(t, srv, 200, "GET", base, w.viewer, nil)["items"].([]any)
	failed, progress := all[0].(map[string]any), all[len(all)-1].(map[string]any)
	if failed["type"] != "failed" || failed["error"] != "no space left on device" || failed["release_id"] != nil ||
		failed["service"] != nil || failed["progress"] != nil || !parseTS(t, failed["ts"]).Equal(t0.Add(3*time.Second)) {
		t.Errorf("failed event = %v", failed)
	}
	if progress["type"] != "download_progress" || progress["progress"] != float64(0) || progress["release_id"] != release.String() ||
		progress["service"] != "api" || progress["error"] != nil || !parseTS(t, progress["received_at"]).Equal(t0.Add(time.Millisecond)) {
		t.Errorf("progress event = %v", progress)
	}

	if items := must(t, srv, 200, "GET", base+"?until=0001-01-01T00:00:00Z", w.viewer, nil)["items"].([]any); len(items) != 0 {
		t.Errorf("%d update events before year 1", len(items))
	}
	wantInvalid(t, srv, fmt.Sprintf("%s?since=%s&until=%s", base, rfc(t0), rfc(t0)), w.viewer, "until")
	wantInvalid(t, srv, base+"?cursor=bogus!", w.viewer, "cursor")
	wantInvalid(t, srv, base+"?cursor="+pagination.EncodeText("a", "b"), w.viewer, "cursor")
}

// Another organisation's device does not exist for this one, whatever it
// sent; and its data does not leak into this organisation's answers.
func TestDeviceDataOtherOrganisation(t *testing.T) {
	e, w, store := deviceDataEnv(t)
	theirs := &world{srv: e.srv, t: t, org: w.otherOrg, owner: w.outsider}
	theirs.withFleet(t)
	dev, org := theirs.device.id, uuid.MustParse(w.otherOrg)
	t0 := time.Now().Add(-time.Minute).UTC()
	writeDeviceData(t, store, dev, org, t0)
	for _, path := range []string{
		"/telemetry?metric=cpu.temperature",
		"/metrics",
		"/logs",
		"/update-events",
	} {
		p := "/v1/devices/" + dev.String() + path
		for _, token := range []string{w.owner, w.viewer} {
			if status, _, out := call(t, e.srv, "GET", p, token, nil); status != 404 || out["code"] != "not_found" {
				t.Errorf("GET %s from another organisation = %d %v, want 404", p, status, out)
			}
		}
		// Its own organisation reads it.
		must(t, e.srv, 200, "GET", p, theirs.owner, nil)
	}
}

// writeDeviceData gives a device a sample, a log line and an update event
// at t.
func writeDeviceData(t *testing.T, store telemetry.Store, dev, org uuid.UUID, at time.Time) {
	t.Helper()
	ctx := t.Context()
	if err := store.WriteSamples(ctx, []telemetry.Sample{{DeviceID: dev, OrgID: org, TS: at, Name: "cpu.temperature", Value: 40, Unit: "C"}}); err != nil {
		t.Fatal(err)
	}
	if err := store.WriteLogs(ctx, []telemetry.LogLine{{DeviceID: dev, OrgID: org, Service: "api", Seq: 1, TS: at,
		Stream: telemetry.StreamStdout, Line: "hello"}}); err != nil {
		t.Fatal(err)
	}
	if err := store.WriteUpdateEvents(ctx, []telemetry.UpdateEvent{{DeviceID: dev, OrgID: org, ID: uuid.New(), TS: at,
		ReceivedAt: at, Type: telemetry.UpdateInstalled}}); err != nil {
		t.Fatal(err)
	}
}
