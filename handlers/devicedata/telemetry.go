package devicedata

import (
	"context"
	"fmt"
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
			"a step of %s cuts [since, until) into %d steps, over the %d a series may have: take a step of at least %s",
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
		return max(time.Second, ceilSecond(until.Sub(since)/defaultSteps)), nil
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

func ceilSecond(d time.Duration) time.Duration {
	if r := d % time.Second; r != 0 {
		d += time.Second - r
	}
	return d
}

// stepsCovering counts the epoch-aligned steps that [since, until) touches,
// which is the most points a series can have.
func stepsCovering(since, until time.Time, step time.Duration) int64 {
	s := step.Microseconds()
	return floorDiv(until.UnixMicro()-1, s) - floorDiv(since.UnixMicro(), s) + 1
}

// minStep is the smallest whole-second step that keeps [since, until)
// within maxPoints steps, for the error message.
func minStep(since, until time.Time) time.Duration {
	d := ceilSecond(until.Sub(since) / maxPoints)
	for stepsCovering(since, until, d) > maxPoints {
		d += time.Second
	}
	return d
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
