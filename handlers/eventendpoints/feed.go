package eventendpoints

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/handlers/streams"
	"github.com/flock-io/flock-api/internal/eventdelivery"
	"github.com/flock-io/flock-api/internal/http/problem"
)

const (
	feedPing  = 15 * time.Second
	feedBatch = 500
	// feedWrite bounds one message's write: a client too slow to read
	// is closed (it resumes with its cursor).
	feedWrite = 10 * time.Second
)

// OrgCloudeventsWebsocket streams the organisation's events from its
// durable log, after the client's cursor.
func (h *EventEndpoints) OrgCloudeventsWebsocket(ctx context.Context, req api.OrgCloudeventsWebsocketRequestObject) (api.OrgCloudeventsWebsocketResponseObject, error) {
	r := streams.RequestFrom(ctx)
	if r == nil {
		return nil, problem.Errorf(http.StatusBadRequest, "not_websocket",
			"this operation is a WebSocket: send a WebSocket upgrade request (GET with Upgrade: websocket)")
	}
	var types []string
	if req.Params.Types != nil {
		for _, t := range *req.Params.Types {
			if !eventdelivery.Known(t) {
				return nil, problem.Invalid("query", "types", fmt.Sprintf("%s is not an event type (GET /v1/event-types lists them)", t))
			}
			types = append(types, t)
		}
	}
	q := db.New(h.Pool)
	var after int64
	if req.Params.After != nil {
		after = *req.Params.After
	} else {
		last, err := q.OrgEventsLast(ctx, req.OrgId)
		if err != nil {
			return nil, fmt.Errorf("read the feed's end for %s: %w", req.OrgId, err)
		}
		after = last
	}
	return feed{h: h, ctx: ctx, r: r, org: req.OrgId, after: after, types: types, access: streams.AccessCheck(ctx, h.Pool)}, nil
}

type feed struct {
	h     *EventEndpoints
	ctx   context.Context
	r     *http.Request
	org   uuid.UUID
	after int64
	types []string
	// access, when set, is asked every FeedRecheck: a member removed or a
	// key deleted loses an open feed, as it does the live streams.
	access func(context.Context) (bool, error)
}

func (f feed) VisitOrgCloudeventsWebsocketResponse(w http.ResponseWriter) error {
	c, err := websocket.Accept(w, f.r, &websocket.AcceptOptions{Subprotocols: []string{"flock.v1"},
		// Bearer tokens, never cookies: another origin gains nothing.
		InsecureSkipVerify: true})
	if err != nil {
		return nil
	}
	defer c.CloseNow()
	ctx := c.CloseRead(context.WithoutCancel(f.ctx))
	poll := f.h.FeedPoll
	if poll <= 0 {
		poll = 250 * time.Millisecond
	}
	q := db.New(f.h.Pool)
	tick := time.NewTicker(poll)
	defer tick.Stop()
	lastPing := time.Now()
	recheck := f.h.FeedRecheck
	if recheck <= 0 {
		recheck = 30 * time.Second
	}
	lastCheck := time.Now()
	types := f.types
	if types == nil {
		types = []string{}
	}
	for {
		evs, err := q.OrgEventsAfter(ctx, db.OrgEventsAfterParams{OrgID: f.org, After: f.after, Types: types, MaxRows: feedBatch})
		if err != nil {
			if ctx.Err() == nil {
				_ = c.Close(websocket.StatusInternalError, "reading the event log failed; reconnect with your cursor")
			}
			return nil
		}
		for _, e := range evs {
			b, err := eventdelivery.CloudEvent(e, true)
			if err != nil {
				return nil
			}
			wctx, cancel := context.WithTimeout(ctx, feedWrite)
			err = c.Write(wctx, websocket.MessageText, b)
			cancel()
			if err != nil {
				_ = c.Close(websocket.StatusPolicyViolation, "slow consumer: reconnect with your cursor")
				return nil
			}
			f.after = e.Seq
		}
		if len(evs) == feedBatch {
			continue
		}
		if f.access != nil && time.Since(lastCheck) >= recheck {
			actx, cancel := context.WithTimeout(ctx, feedWrite)
			ok, err := f.access(actx)
			cancel()
			// A failed check keeps the feed: a database hiccup is no reason
			// to drop every integration; the next check decides.
			if err == nil && !ok {
				_ = c.Close(websocket.StatusPolicyViolation, "access_ended: the caller may no longer read this organisation's events")
				return nil
			}
			lastCheck = time.Now()
		}
		if time.Since(lastPing) >= feedPing {
			pctx, cancel := context.WithTimeout(ctx, feedWrite)
			err := c.Ping(pctx)
			cancel()
			if err != nil {
				return nil
			}
			lastPing = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
