package devicedata

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/telemetry"
)

const (
	// maxPoints bounds a series: a range that needs more steps needs a
	// larger step. It keeps one response, and the aggregation behind it,
	// small whatever range is asked for.
	maxPoints = 1000
	// defaultRange is the range when since is not given.
	defaultRange = time.Hour
	// defaultSteps is how many steps the default step cuts the range into.
	defaultSteps = 60
)

// DeviceTelemetryGet aggregates a device's metrics per step.
func (h *DeviceData) DeviceTelemetryGet(ctx context.Context, req api.DeviceTelemetryGetRequestObject) (api.DeviceTelemetryGetResponseObject, error) {
	p := req.Params
	until := h.now().Truncate(time.Microsecond)
	if p.Until != nil {
		until = p.Until.UTC()
	}
	since := until.Add(-defaultRange)
	if p.Since != nil {
		since = p.Since.UTC()
	}
	if !until.After(since) {
		return nil, problem.Invalid("query", "until", "until must be after since")
	}
	step, err := parseStep(p.Step, since, until)
	if err != nil {
		return nil, err
	}
	if n := stepsCovering(since, until, step); n > maxPoints {
		return nil, problem.Invalid("query", "step", fmt.Sprintf(
			"a step of %s cuts [since, until) into %d steps, over the %d a series may have: a step of %s or more keeps within it",
			step, n, maxPoints, minStep(since, until)))
	}

	var series []telemetry.Series
	if h.Telemetry != nil {
		if series, err = h.Telemetry.Series(ctx, req.DeviceId, p.Metric, since, until, step); err != nil {
			return nil, fmt.Errorf("telemetry of device %s: %w", req.DeviceId, err)
		}
	}
	// A series with points names a metric the device sends; only an empty
	// one needs the list of names (a scan of the device's samples on
	// ClickHouse) to tell a quiet range from a name it never sent.
	if empty := len(series) < len(p.Metric) || slices.ContainsFunc(series, func(s telemetry.Series) bool { return len(s.Points) == 0 }); empty {
		known, err := h.metrics(ctx, req)
		if err != nil {
			return nil, err
		}
		for _, name := range p.Metric {
			if !known[name] {
				return nil, problem.Invalid("query", "metric", fmt.Sprintf("the device has no samples of %q", name))
			}
		}
	}
	out := api.TelemetrySeries{Since: since, Until: until, StepSeconds: int(step / time.Second)}
	out.Series = makeLike(out.Series, len(series))
	for i, s := range series {
		o := &out.Series[i]
		o.Metric, o.Unit = s.Name, s.Unit
		o.Points = makeLike(o.Points, len(s.Points))
		for j, pt := range s.Points {
			q := &o.Points[j]
			q.Ts, q.Count, q.Min, q.Max, q.Avg, q.Last = pt.Start, pt.Count, pt.Min, pt.Max, pt.Avg, pt.Last
		}
	}
	return api.DeviceTelemetryGet200JSONResponse(out), nil
}

// metrics is the set of names the device has samples of.
func (h *DeviceData) metrics(ctx context.Context, req api.DeviceTelemetryGetRequestObject) (map[string]bool, error) {
	known := map[string]bool{}
	if h.Telemetry == nil {
		return known, nil
	}
	names, err := h.Telemetry.MetricNames(ctx, req.DeviceId)
	if err != nil {
		return nil, fmt.Errorf("metric names of device %s: %w", req.DeviceId, err)
	}
	for _, m := range names {
		known[m.Name] = true
	}
	return known, nil
}

// parseStep reads the step parameter, or picks the default: the range in
// defaultSteps steps, rounded up to a whole second.
func parseStep(s *string, since, until time.Time) (time.Duration, error) {
	if s == nil {
		return ceilSeconds(ceilDiv(spanMicros(since, until), defaultSteps)), nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(*s))
	switch {
	case err != nil:
		return 0, problem.Invalid("query", "step", fmt.Sprintf("%q is not a duration such as 30s, 5m or 1h", *s))
	case d < time.Second || d%time.Second != 0:
		return 0, problem.Invalid("query", "step", fmt.Sprintf("step %s: must be a whole number of seconds, at least 1s", d))
	}
	return d, nil
}

// spanMicros is the length of [since, until) in microseconds: time.Sub
// saturates at 292 years, and a request may ask for ten thousand.
func spanMicros(since, until time.Time) int64 { return until.UnixMicro() - since.UnixMicro() }

// ceilSeconds is us rounded up to a whole number of seconds, at least one,
// and at most the longest Duration.
func ceilSeconds(us int64) time.Duration {
	const most = int64(math.MaxInt64 / time.Second)
	return time.Duration(min(max(ceilDiv(us, 1_000_000), 1), most)) * time.Second
}

func ceilDiv(a, b int64) int64 { return -floorDiv(-a, b) }

// stepsCovering counts the epoch-aligned steps that [since, until) touches,
// which is the most points a series can have.
func stepsCovering(since, until time.Time, step time.Duration) int64 {
	s := step.Microseconds()
	return floorDiv(until.UnixMicro()-1, s) - floorDiv(since.UnixMicro(), s) + 1
}

// minStep is a whole-second step from which on every step keeps [since,
// until) within maxPoints steps, for the error message: a range of length
// L touches at most floor((L-1µs)/step) + 2 aligned steps, so L/(maxPoints-1)
// is enough, wherever the range meets the steps.
func minStep(since, until time.Time) time.Duration {
	return ceilSeconds(ceilDiv(spanMicros(since, until), maxPoints-1))
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}

// makeLike makes a slice of the type of s, which the generated models
// declare as slices of anonymous structs.
func makeLike[S ~[]E, E any](_ S, n int) S { return make(S, n) }

// DeviceMetricList lists the metric names a device has samples of.
func (h *DeviceData) DeviceMetricList(ctx context.Context, req api.DeviceMetricListRequestObject) (api.DeviceMetricListResponseObject, error) {
	var names []telemetry.Metric
	if h.Telemetry != nil {
		var err error
		if names, err = h.Telemetry.MetricNames(ctx, req.DeviceId); err != nil {
			return nil, fmt.Errorf("metric names of device %s: %w", req.DeviceId, err)
		}
	}
	var out api.MetricList
	out.Metrics = makeLike(out.Metrics, len(names))
	for i, m := range names {
		out.Metrics[i].Name, out.Metrics[i].Unit, out.Metrics[i].LastTs = m.Name, m.Unit, m.LastTS
	}
	return api.DeviceMetricList200JSONResponse(out), nil
}
