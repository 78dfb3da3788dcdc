package streams

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/bus"
)

// Sink is where a stream's events are written: a Server-Sent Events
// response or a WebSocket.
type Sink interface {
	// Send writes one event (it may stay buffered until Flush).
	Send(ev *Event) error
	Flush() error
	// Heartbeat keeps proxies from closing an idle stream.
	Heartbeat() error
	// Slow tells the client it was dropped for not keeping up (an error
	// event, and for a WebSocket the close code), with a short deadline.
	Slow() error
	// Stop tells the client its stream ends and why (an error event with
	// code and detail, and for a WebSocket close code 1008), with a short
	// deadline.
	Stop(code, detail string) error
}

// Stream is one client's stream.
type Stream struct {
	Kind   Kind
	Filter *Filter
	// From resumes after an event id; nil starts live.
	From *Position
	// Heartbeat is the idle time after which Sink.Heartbeat is called;
	// default 15s.
	Heartbeat time.Duration
	// Refresh, when set, is called every RefreshEvery while the stream is
	// live (a device group's members).
	Refresh      func(context.Context) error
	RefreshEvery time.Duration
	// Recheck, when set, is asked every RecheckEvery (default 30s) while
	// the stream is live whether its caller may still read it; false ends
	// the stream with an error event (code access_ended). A stream is
	// authorised when it opens, and without this a member removed from
	// the organisation, or a deleted API key, would keep reading.
	Recheck      func(context.Context) (bool, error)
	RecheckEvery time.Duration
	// Logs makes this a log stream that sends stored history first
	// (unless From is a position on the bus).
	Logs *LogHistory
}

// LogHistory is the history part of a log stream.
type LogHistory struct {
	Org, Fleet, Device uuid.UUID
	// Since starts the history at a time; zero sends the newest Tail lines.
	Since time.Time
	Tail  int
	// Page reads stored lines of the device, filtered as the stream is.
	Page func(ctx context.Context, q HistoryQuery) ([]LogLineIn, error)
	// Lookback is how far before "now" the live part starts reading the
	// bus, so a line the ingester put on the bus before it was stored is
	// not missed; default 10s. Lines sent by the history are not sent
	// again.
	Lookback time.Duration
}

// HistoryQuery is one page of stored lines.
type HistoryQuery struct {
	Since       time.Time
	After       *LogCursor
	OldestFirst bool
	Limit       int
}

// errTold ends a stream whose client was told why (too slow, or its
// access ended); its sink has said so and, for a WebSocket, closed.
var errTold = errors.New("stream ended; the client was told why")

const (
	defaultHeartbeat = 15 * time.Second
	defaultRecheck   = 30 * time.Second
	defaultLookback  = 10 * time.Second
	historyPage      = 500
	// dedupeSize bounds how many history lines a log stream remembers to
	// not send again from the bus: only lines put on the bus within the
	// lookback before the history was read can come again, far fewer
	// than this at any real log rate.
	dedupeSize = 8192
	// maxBatch bounds the events written between two flushes.
	maxBatch = 256
	// refreshTimeout bounds one refresh of a stream's filter (a detached
	// stream's context never ends by itself).
	refreshTimeout = 10 * time.Second
)

// Serve runs a stream until ctx ends, the client fails or is too slow, or
// the hub stops. open is called once the stream is registered (errors
// before it are the caller's to report as an HTTP response); it writes
// the response head and returns the sink.
func (h *Hub) Serve(ctx context.Context, st *Stream, open func() (Sink, error)) error {
	var sink Sink
	handed := false
	defer func() {
		// A connection taken over and not handed to a live loop is ours
		// to close.
		if d, ok := sink.(detachable); ok && !handed {
			d.close()
		}
	}()
	var dd *dedupe
	from := st.From
	var sub *Sub
	for round := 0; ; round++ {
		var at *Position
		var err error
		history := round == 0 && st.Logs != nil &&
			((from == nil && (st.Logs.Tail > 0 || !st.Logs.Since.IsZero())) || (from != nil && from.History != nil))
		if history {
			var p0 *Position
			p0, err = h.lookback(ctx, st.Logs)
			if err != nil {
				return err
			}
			sub, at, err = h.Subscribe(ctx, KindLogs, st.Filter, p0)
			if err != nil {
				return err
			}
			if sink, err = open(); err != nil {
				sub.Close()
				return err
			}
			dd, err = sendHistory(ctx, st.Logs, from, sink)
			if err != nil {
				sub.Close()
				return err
			}
			from = p0
		} else {
			sub, at, err = h.Subscribe(ctx, st.Kind, st.Filter, from)
			if err != nil {
				if sink != nil && errors.Is(err, ErrStopped) {
					return nil
				}
				return err
			}
			if sink == nil {
				if sink, err = open(); err != nil {
					sub.Close()
					return err
				}
			}
		}
		if from == nil {
			break
		}
		emit := sink.Send
		if dd != nil {
			emit = func(ev *Event) error {
				if dd.seen(ev) {
					return nil
				}
				return sink.Send(ev)
			}
		}
		reached, err := h.replay(ctx, sub, from, at, emit, sink.Flush)
		if err != nil {
			sub.Close()
			return err
		}
		if sub.Live() {
			break
		}
		// The queue filled while replaying: catch up again from there.
		sub.Close()
		from = reached
	}
	if err := sink.Flush(); err != nil {
		sub.Close()
		return err
	}
	if d, ok := sink.(detachable); ok {
		// The request is done with: the stream goes on in a goroutine of
		// the hub's with a shallow stack, and the request's goroutines and
		// buffers go away (what an idle stream costs is mostly those).
		h.mu.Lock()
		if h.stopped {
			h.mu.Unlock()
			sub.Close()
			return nil
		}
		sub.abort = d.abort
		h.detached.Add(1)
		h.mu.Unlock()
		handed = true
		go func() {
			defer h.detached.Done()
			defer d.close()
			defer sub.Close()
			_ = h.live(context.WithoutCancel(ctx), st, sub, sink, dd)
		}()
		return nil
	}
	defer sub.Close()
	return h.live(ctx, st, sub, sink, dd)
}

// detachable is a sink whose stream may outlive its request: it owns its
// connection.
type detachable interface {
	// abort makes a blocked write fail at once (the hub is stopping).
	abort()
	close()
}

func (h *Hub) live(ctx context.Context, st *Stream, sub *Sub, sink Sink, dd *dedupe) error {
	every := st.Heartbeat
	if every <= 0 {
		every = defaultHeartbeat
	}
	beat := time.NewTimer(every)
	defer beat.Stop()
	var refresh <-chan time.Time
	if st.Refresh != nil && st.RefreshEvery > 0 {
		t := time.NewTicker(st.RefreshEvery)
		defer t.Stop()
		refresh = t.C
	}
	var recheck <-chan time.Time
	if st.Recheck != nil {
		d := st.RecheckEvery
		if d <= 0 {
			d = defaultRecheck
		}
		t := time.NewTicker(d)
		defer t.Stop()
		recheck = t.C
	}
	for {
		select {
		case ev := <-sub.Events():
			// Write what is queued, then flush once: one write for a burst.
			for n := 1; ; n++ {
				if dd == nil || !dd.seen(ev) {
					if err := sink.Send(ev); err != nil {
						return err
					}
				}
				if n == maxBatch {
					break
				}
				more := false
				select {
				case ev = <-sub.Events():
					more = true
				default:
				}
				if !more {
					break
				}
			}
			if sub.Slow() {
				_ = sink.Slow()
				return errTold
			}
			if err := sink.Flush(); err != nil {
				return err
			}
			beat.Reset(every)
		case <-sub.Done():
			if sub.Slow() {
				_ = sink.Slow()
				return errTold
			}
			return nil
		case <-beat.C:
			if err := sink.Heartbeat(); err != nil {
				return err
			}
			beat.Reset(every)
		case <-refresh:
			rctx, cancel := context.WithTimeout(ctx, refreshTimeout)
			err := st.Refresh(rctx)
			cancel()
			if err != nil && ctx.Err() == nil {
				// Keep the members it had; the next refresh may work.
				h.log.Warn("stream refresh failed", "error", err.Error())
			}
		case <-recheck:
			rctx, cancel := context.WithTimeout(ctx, refreshTimeout)
			ok, err := st.Recheck(rctx)
			cancel()
			switch {
			case err != nil && ctx.Err() == nil:
				// Keep serving: a database hiccup is no reason to drop
				// every stream; the next check decides.
				h.log.Warn("stream access check failed", "error", err.Error())
			case err == nil && !ok:
				_ = sink.Stop("access_ended", "the caller may no longer read this stream (removed from the organisation, key deleted or expired, or the resource is gone)")
				return errTold
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// lookback is the position a log stream's live part starts from.
func (h *Hub) lookback(ctx context.Context, lh *LogHistory) (*Position, error) {
	d := lh.Lookback
	if d <= 0 {
		d = defaultLookback
	}
	offs, err := h.bus.OffsetsAfter(ctx, time.Now().Add(-d), bus.TopicDeviceLogs)
	if err != nil {
		return nil, fmt.Errorf("log stream: %w", err)
	}
	p := &Position{Kind: KindLogs}
	p.Offs[tLogs] = offs[bus.TopicDeviceLogs]
	return p, nil
}

// sendHistory sends the stored lines the stream asked for, oldest first,
// and returns what the live part must not send again.
func sendHistory(ctx context.Context, lh *LogHistory, from *Position, sink Sink) (*dedupe, error) {
	dd := &dedupe{keys: map[logKey]struct{}{}}
	send := func(l LogLineIn) error {
		dd.add(l)
		return sink.Send(HistoryLine(lh.Org, lh.Fleet, lh.Device, l))
	}
	switch {
	case from != nil && from.History != nil, !lh.Since.IsZero():
		q := HistoryQuery{Since: lh.Since, OldestFirst: true, Limit: historyPage}
		if from != nil && from.History != nil {
			c := *from.History
			q = HistoryQuery{After: &c, OldestFirst: true, Limit: historyPage}
			dd.bound = &LogCursor{TS: c.TS, Service: c.Service, Seq: c.Seq + 1}
		} else {
			dd.bound = &LogCursor{TS: lh.Since}
		}
		for {
			page, err := lh.Page(ctx, q)
			if err != nil {
				return nil, err
			}
			for _, l := range page {
				if err := send(l); err != nil {
					return nil, err
				}
			}
			if err := sink.Flush(); err != nil {
				return nil, err
			}
			if len(page) < q.Limit {
				return dd, nil
			}
			last := page[len(page)-1]
			q.Since = time.Time{}
			q.After = &LogCursor{TS: last.TS, Service: last.Service, Seq: last.Seq}
		}
	case lh.Tail > 0:
		page, err := lh.Page(ctx, HistoryQuery{Limit: lh.Tail})
		if err != nil {
			return nil, err
		}
		slices.Reverse(page)
		if len(page) > 0 {
			dd.bound = &LogCursor{TS: page[0].TS, Service: page[0].Service, Seq: page[0].Seq}
		}
		for _, l := range page {
			if err := send(l); err != nil {
				return nil, err
			}
		}
		return dd, sink.Flush()
	}
	return dd, nil
}

// dedupe remembers the history lines a log stream sent, so the lines the
// bus holds again from the lookback are not sent twice, and where the
// history began, so lines before what was asked for are not sent either.
type dedupe struct {
	keys  map[logKey]struct{}
	order []logKey
	next  int
	bound *LogCursor
}

type logKey struct {
	service string
	seq     int64
}

func (d *dedupe) add(l LogLineIn) {
	k := logKey{l.Service, l.Seq}
	if len(d.order) < dedupeSize {
		d.order = append(d.order, k)
	} else {
		delete(d.keys, d.order[d.next])
		d.order[d.next] = k
		d.next = (d.next + 1) % dedupeSize
	}
	d.keys[k] = struct{}{}
}

// seen reports whether ev is a log line the stream must not send.
func (d *dedupe) seen(ev *Event) bool {
	l := ev.Log
	if l == nil {
		return false
	}
	if _, ok := d.keys[logKey{l.Service, l.Seq}]; ok {
		return true
	}
	if b := d.bound; b != nil && less(LogCursor{TS: l.TS, Service: l.Service, Seq: l.Seq}, *b) {
		return true
	}
	return false
}

// less orders log lines as the store does: by (ts, service, seq).
func less(a, b LogCursor) bool {
	if !a.TS.Equal(b.TS) {
		return a.TS.Before(b.TS)
	}
	if a.Service != b.Service {
		return a.Service < b.Service
	}
	return a.Seq < b.Seq
}
