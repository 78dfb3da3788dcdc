// Package streams serves the live event streams (Server-Sent Events and
// WebSocket) from the Kafka topics. One Hub per API process reads every
// partition of the device, command, rollout and log topics without a
// consumer group, from the end at start-up, and hands each record to the
// streams whose filter it matches. Every replica reads the same
// partitions, so any replica serves any client and an event has the same
// id on all of them.
//
// An event's id is a Position: per partition, the offset of the first
// record not yet considered for the client. A client that comes back with
// it registers live at the hub's current position, gets everything between
// its position and that one replayed by a reader of its own, then the live
// events the hub buffered meanwhile: nothing lost, nothing repeated at the
// seam. What retention dropped is announced by a gap event.
//
// A client that does not keep up is dropped, never buffered without bound:
// each stream holds a small queue of shared, pre-rendered events, and the
// hub drops the stream when the queue is full.
package streams

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/flock-io/flock-api/internal/bus"
)

// Options tune a Hub.
type Options struct {
	// Buffer is how many events a stream may have waiting before it is
	// dropped as too slow; default 128.
	Buffer int
	// MaxWait bounds how long a fetch waits on an idle broker; default
	// 500ms. It bounds how quickly the hub notices nothing, not latency:
	// a record ends the wait at once.
	MaxWait time.Duration
	Log     *slog.Logger
	// Registerer (may be nil) receives the hub's metrics.
	Registerer prometheus.Registerer
}

// Why a stream was dropped.
const (
	reasonNone int32 = iota
	// reasonSlow: the queue filled while the stream was live.
	reasonSlow
	// reasonOverflow: the queue filled while the stream was still
	// replaying; the stream catches up again from where the replay ended.
	reasonOverflow
	// reasonStopped: the hub stopped (the process is shutting down).
	reasonStopped
)

// ErrStopped is returned to streams that start after the hub stopped.
var ErrStopped = errors.New("stream hub stopped")

// Hub reads the topics and dispatches records to streams.
type Hub struct {
	bus    *bus.Bus
	log    *slog.Logger
	buffer int
	wait   time.Duration

	ready chan struct{} // closed once pos holds the start position

	mu       sync.Mutex
	pos      [numTopics][]int64 // the next offset of each partition
	progress chan struct{}      // closed and replaced after each batch
	subs     map[uuid.UUID][]*Sub
	count    int
	// detached counts the streams running on goroutines of the hub's
	// (Serve); Run waits for them.
	detached sync.WaitGroup
	stopped  bool
	runErr   error

	dropped   *prometheus.CounterVec
	delivered prometheus.Counter
}

// New returns a Hub; Run starts it.
func New(b *bus.Bus, o Options) *Hub {
	if o.Buffer <= 0 {
		o.Buffer = 128
	}
	if o.MaxWait <= 0 {
		o.MaxWait = 500 * time.Millisecond
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	h := &Hub{bus: b, log: o.Log, buffer: o.Buffer, wait: o.MaxWait, ready: make(chan struct{}),
		progress: make(chan struct{}), subs: map[uuid.UUID][]*Sub{},
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "flock_streams_dropped_total",
			Help: "Streams the hub dropped because their queue was full: slow_consumer (live; the client is told) " +
				"or catch_up (while replaying; the stream catches up again by itself)."}, []string{"reason"}),
		delivered: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_stream_events_queued_total",
			Help: "Live events queued to streams (one per stream that gets it)."}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(h.dropped, h.delivered,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "flock_streams_open",
				Help: "Streams registered with the hub."}, func() float64 { return float64(h.Streams()) }))
	}
	return h
}

// Run reads from the end of every partition until ctx ends, then ends
// every stream (they return, so the HTTP server can drain).
func (h *Hub) Run(ctx context.Context) error {
	err := h.run(ctx)
	h.mu.Lock()
	h.stopped = true
	h.runErr = err
	for _, subs := range h.subs {
		for _, s := range subs {
			s.drop(reasonStopped)
			if s.abort != nil {
				s.abort()
			}
		}
	}
	h.subs = map[uuid.UUID][]*Sub{}
	h.count = 0
	h.mu.Unlock()
	h.detached.Wait()
	select {
	case <-h.ready:
	default:
		close(h.ready)
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (h *Hub) run(ctx context.Context) error {
	start, err := h.endOffsets(ctx)
	if err != nil {
		return err
	}
	from := bus.Offsets{}
	h.mu.Lock()
	for t, name := range hubTopics {
		h.pos[t] = start[name]
		if start[name] != nil {
			from[name] = start[name]
		}
	}
	h.mu.Unlock()
	tail, err := h.bus.Tail(from, bus.TailOptions{MaxWait: h.wait})
	if err != nil {
		return fmt.Errorf("stream hub: %w", err)
	}
	defer tail.Close()
	close(h.ready)
	h.log.Info("stream hub reading", "topics", len(from))
	for {
		recs, err := tail.Poll(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("stream hub: %w", err)
		}
		h.dispatch(recs)
	}
}

// endOffsets lists where every topic ends. A topic the cluster does not
// have (yet) is left out: its streams' events simply never come.
func (h *Hub) endOffsets(ctx context.Context) (bus.Offsets, error) {
	var err error
	for attempt := 0; ; attempt++ {
		out := bus.Offsets{}
		for _, name := range hubTopics {
			var o bus.Offsets
			o, err = h.bus.EndOffsets(ctx, name)
			if err != nil {
				if attempt > 0 {
					h.log.Warn("stream hub: topic not read", "topic", name, "error", err.Error())
				}
				continue
			}
			out[name] = o[name]
		}
		if len(out) > 0 || attempt > 0 {
			return out, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func topicIndex(name string) int {
	for i, n := range hubTopics {
		if n == name {
			return i
		}
	}
	return -1
}

// dispatch hands a batch to the streams. It holds the lock for the whole
// batch, so a stream registers between batches: at a position no record
// of the batch is on both sides of.
func (h *Hub) dispatch(recs []bus.TailRecord) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range recs {
		tr := &recs[i]
		t := topicIndex(tr.Topic)
		if t < 0 || int(tr.Partition) >= len(h.pos[t]) {
			continue
		}
		if exp := h.pos[t][tr.Partition]; tr.Offset > exp {
			h.gapLocked(t, tr.Partition, exp, tr.Offset)
		}
		h.pos[t][tr.Partition] = tr.Offset + 1
		subs := h.subs[orgOf(tr)]
		if len(subs) == 0 {
			continue
		}
		r, err := decode(t, tr)
		if err != nil {
			h.log.Warn("stream hub: record not readable; skipped", "error", err.Error())
			continue
		}
		subs = h.subs[r.org]
		var built [KindLogs + 1][]*Event
		for j := 0; j < len(subs); j++ {
			s := subs[j]
			if !s.kindHas(t) || !s.f.match(s.kind, r) {
				continue
			}
			evs := built[s.kind]
			if evs == nil {
				evs = r.events(s.kind, &h.pos, 0)
				built[s.kind] = evs
			}
			if !s.offer(r, evs) {
				if s.reason.Load() == reasonSlow {
					h.dropped.WithLabelValues("slow_consumer").Inc()
				} else {
					h.dropped.WithLabelValues("catch_up").Inc()
				}
				h.removeLocked(s)
				j-- // removeLocked moved the last stream into slot j
				subs = h.subs[r.org]
			}
		}
	}
	close(h.progress)
	h.progress = make(chan struct{})
}

// gapLocked tells every stream fed by topic t that records from..to-1 of
// partition p went before the hub read them (retention caught up with a
// hub that fell that far behind, or records were deleted): they may have
// been any stream's, so every stream of the topic gets the gap event.
func (h *Hub) gapLocked(t int, p int32, from, to int64) {
	h.log.Warn("stream hub: records gone before they were read", "topic", hubTopics[t], "partition", p, "from", from, "to", to-1)
	h.pos[t][p] = to
	detail := fmt.Sprintf("the bus no longer holds %d records (retention dropped them before this server read them; some may have been for this stream): %s partition %d offsets %d to %d",
		to-from, hubTopics[t], p, from, to-1)
	var built [KindLogs + 1]*Event
	for org, subs := range h.subs {
		for j := 0; j < len(subs); j++ {
			s := subs[j]
			if !s.kindHas(t) {
				continue
			}
			if built[s.kind] == nil {
				built[s.kind] = Control(TypeGap, (&Position{Kind: s.kind, Offs: h.pos}).Encode(), "retention", detail)
			}
			if !s.offer(&record{}, []*Event{built[s.kind]}) {
				h.removeLocked(s)
				j--
				subs = h.subs[org]
			}
		}
	}
}

// orgOf peeks at a record's organisation without decoding all of it, so
// records no stream wants cost almost nothing. Records start with the ids
// (the ingester and the scheduler write them first); anything else is
// decoded in full.
func orgOf(tr *bus.TailRecord) uuid.UUID {
	v := tr.Value
	const key = `"org_id":"`
	for i := 0; i+len(key)+36 <= len(v) && i < 256; i++ {
		if v[i] == '"' && string(v[i:i+len(key)]) == key {
			id, err := uuid.ParseBytes(v[i+len(key) : i+len(key)+36])
			if err == nil {
				return id
			}
			break
		}
	}
	var h head
	if err := json.Unmarshal(v, &h); err == nil {
		id, _ := uuid.Parse(h.OrgID)
		return id
	}
	return uuid.Nil
}

// Sub is one stream registered with the hub.
type Sub struct {
	h    *Hub
	kind Kind
	f    *Filter
	ch   chan *Event
	done chan struct{}
	// reason is set (under the hub's lock) before done is closed.
	reason    atomic.Int32
	replaying bool // under the hub's lock
	idx       int
	abort     func() // under the hub's lock
}

// Events delivers the stream's events.
func (s *Sub) Events() <-chan *Event { return s.ch }

// Done is closed when the hub dropped the stream; Dropped says why.
func (s *Sub) Done() <-chan struct{} { return s.done }

// Slow reports whether the stream was dropped because the client did not
// keep up.
func (s *Sub) Slow() bool { return s.reason.Load() == reasonSlow }

func (s *Sub) overflowed() bool { return s.reason.Load() == reasonOverflow }

// Live marks the end of the replay: from now on a full queue drops the
// stream as too slow. False means the queue filled before that: the
// stream must catch up again.
func (s *Sub) Live() bool {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	s.replaying = false
	return s.reason.Load() != reasonOverflow
}

func (s *Sub) kindHas(t int) bool {
	for _, kt := range kindTopics[s.kind] {
		if kt == t {
			return true
		}
	}
	return false
}

// offer queues r's events (those the filter keeps) without blocking; false
// means the queue is full and the stream is dropped.
func (s *Sub) offer(r *record, evs []*Event) bool {
	for i, ev := range evs {
		if r.lines != nil && !s.f.matchLine(&r.lines[i]) {
			continue
		}
		select {
		case s.ch <- ev:
			s.h.delivered.Inc()
		default:
			if s.replaying {
				s.drop(reasonOverflow)
			} else {
				s.drop(reasonSlow)
			}
			return false
		}
	}
	return true
}

// drop ends the stream; the hub's lock is held.
func (s *Sub) drop(reason int32) {
	if !s.reason.CompareAndSwap(reasonNone, reason) {
		return
	}
	close(s.done)
}

func (h *Hub) removeLocked(s *Sub) {
	subs := h.subs[s.f.Org]
	if s.idx >= len(subs) || subs[s.idx] != s {
		return
	}
	last := len(subs) - 1
	subs[s.idx] = subs[last]
	subs[s.idx].idx = s.idx
	subs[last] = nil
	subs = subs[:last]
	if len(subs) == 0 {
		delete(h.subs, s.f.Org)
	} else {
		h.subs[s.f.Org] = subs
	}
	h.count--
}

// Close unregisters the stream.
func (s *Sub) Close() {
	s.h.mu.Lock()
	defer s.h.mu.Unlock()
	s.h.removeLocked(s)
	s.drop(reasonStopped)
}

// Streams is how many streams are registered.
func (h *Hub) Streams() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count
}

// aheadWait bounds how long a stream resuming from a position this hub
// has not reached yet (another replica was ahead) waits for it.
const aheadWait = 10 * time.Second

// Subscribe registers a stream of kind k. With from nil it is live from
// now; otherwise it is registered replaying, at the hub's position, which
// it returns: the caller replays from..that position (Replay), then calls
// Live. Until then a full queue does not drop the stream as slow: Replay
// reports it, and the caller subscribes again from where it got.
func (h *Hub) Subscribe(ctx context.Context, k Kind, f *Filter, from *Position) (*Sub, *Position, error) {
	select {
	case <-h.ready:
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	deadline := time.Now().Add(aheadWait)
	for {
		h.mu.Lock()
		if h.stopped {
			h.mu.Unlock()
			return nil, nil, ErrStopped
		}
		if from == nil || from.reachedBy(&h.pos) || time.Now().After(deadline) {
			break
		}
		wait := h.progress
		h.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(time.Until(deadline)):
		}
	}
	defer h.mu.Unlock()
	at := &Position{Kind: k}
	for _, t := range kindTopics[k] {
		at.Offs[t] = append([]int64(nil), h.pos[t]...)
	}
	s := &Sub{h: h, kind: k, f: f, ch: make(chan *Event, h.buffer), done: make(chan struct{}), replaying: from != nil}
	s.idx = len(h.subs[f.Org])
	h.subs[f.Org] = append(h.subs[f.Org], s)
	h.count++
	return s, at, nil
}
