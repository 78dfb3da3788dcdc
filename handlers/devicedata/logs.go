package devicedata

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/internal/http/pagination"
	"github.com/flock-io/flock-api/internal/telemetry"
)

// DeviceLogList pages a device's log lines newest first.
func (h *DeviceData) DeviceLogList(ctx context.Context, req api.DeviceLogListRequestObject) (api.DeviceLogListResponseObject, error) {
	p := req.Params
	since, until, err := timeRange(p.Since, p.Until)
	if err != nil {
		return nil, err
	}
	after, err := decodeLogCursor(p.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(p.Limit)
	if h.Telemetry == nil || nothingBefore(p.Until) {
		return api.DeviceLogList200JSONResponse{Items: []api.LogLine{}}, nil
	}
	q := telemetry.LogQuery{Since: since, Until: until, After: after, Limit: int(limit) + 1}
	if p.Service != nil {
		q.Service = *p.Service
	}
	if p.Q != nil {
		q.Contains = *p.Q
	}
	rows, err := h.Telemetry.Logs(ctx, req.DeviceId, q)
	if err != nil {
		return nil, fmt.Errorf("list logs of device %s: %w", req.DeviceId, err)
	}
	var next *string
	if len(rows) > int(limit) {
		rows = rows[:limit]
		c := encodeLogCursor(rows[len(rows)-1].Cursor())
		next = &c
	}
	items := make([]api.LogLine, len(rows))
	for i, r := range rows {
		items[i] = api.LogLine{Service: r.Service, Seq: r.Seq, Ts: r.TS, Stream: api.LogLineStream(r.Stream), Line: r.Line}
	}
	return api.DeviceLogList200JSONResponse{Items: items, NextCursor: next}, nil
}

// A log cursor is the whole sort key of the page's last line (ts, service,
// seq), unique per device, as a text cursor of the pagination package.

func encodeLogCursor(c *telemetry.LogCursor) string {
	return pagination.EncodeText(c.TS.UTC().Format(time.RFC3339Nano), c.Service, strconv.FormatInt(c.Seq, 10))
}

func decodeLogCursor(s *string) (*telemetry.LogCursor, error) {
	parts, err := pagination.DecodeText(s, 3)
	if err != nil || parts == nil {
		return nil, err
	}
	ts, err1 := time.Parse(time.RFC3339Nano, parts[0])
	seq, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil {
		return nil, pagination.BadCursor(*s)
	}
	return &telemetry.LogCursor{TS: ts, Service: parts[1], Seq: seq}, nil
}
