package devices

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/internal/http/pagination"
	"github.com/flock-io/flock-api/internal/telemetry"
)

// DeviceConnectivityList lists a device's connects and disconnects, newest
// first, from the telemetry store.
func (h *Devices) DeviceConnectivityList(ctx context.Context, req api.DeviceConnectivityListRequestObject) (api.DeviceConnectivityListResponseObject, error) {
	before, err := decodeConnectivityCursor(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	if h.Telemetry == nil {
		return api.DeviceConnectivityList200JSONResponse{Items: []api.ConnectivityEvent{}}, nil
	}
	rows, err := h.Telemetry.Connectivity(ctx, req.DeviceId, before, int(limit)+1)
	if err != nil {
		return nil, fmt.Errorf("list connectivity of device %s: %w", req.DeviceId, err)
	}
	var next *string
	if len(rows) > int(limit) {
		rows = rows[:limit]
		c := encodeConnectivityCursor(rows[len(rows)-1].Cursor())
		next = &c
	}
	items := make([]api.ConnectivityEvent, len(rows))
	for i, r := range rows {
		items[i] = api.ConnectivityEvent{Event: api.ConnectivityEventEvent(r.Event), ConnectionSeq: r.ConnectionSeq, At: r.At}
	}
	return api.DeviceConnectivityList200JSONResponse{Items: items, NextCursor: next}, nil
}

// connectivityCursor is the opaque cursor of a connectivity page: the whole
// sort key of its last event, which is unique per device, so events that
// share an instant are never skipped or repeated across pages.
type connectivityCursor struct {
	At    time.Time `json:"t"`
	Seq   int64     `json:"s"`
	Event string    `json:"e"`
}

func encodeConnectivityCursor(c *telemetry.ConnectivityCursor) string {
	b, _ := json.Marshal(connectivityCursor{At: c.At.UTC(), Seq: c.ConnectionSeq, Event: c.Event})
	return base64.RawURLEncoding.EncodeToString(b)
}

// decodeConnectivityCursor parses a cursor this API handed out; nil or empty
// means the first page.
func decodeConnectivityCursor(s *string) (*telemetry.ConnectivityCursor, error) {
	if s == nil || *s == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(*s)
	var c connectivityCursor
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil || c.At.IsZero() || (c.Event != telemetry.EventConnected && c.Event != telemetry.EventDisconnected) {
		return nil, pagination.BadCursor(*s)
	}
	return &telemetry.ConnectivityCursor{At: c.At, ConnectionSeq: c.Seq, Event: c.Event}, nil
}
