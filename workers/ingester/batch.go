package ingester

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/devicetopic"
)

// worker batches the messages of one connection and writes them. One batch
// is written while the next fills: the connection's window (its Receive
// Maximum) keeps messages coming during a write, and batches are written
// and acknowledged in the order they were received, one at a time, so a
// device's records reach Kafka in the order this connection got them.
type worker struct {
	in  *Ingester
	log *slog.Logger

	cur     *batch      // filling
	writing *batch      // being written by a goroutine; nil when none is
	spare   *batch      // a written batch, kept for its buffers
	todo    chan *batch // to the writing goroutine
	done    chan error  // the writing goroutine's result
	timer   *time.Timer
	current *paho.Client // the connection the newest message came in on
	unacked int          // QoS 1 messages received and not yet acknowledged
}

// batch is a run of messages written together.
type batch struct {
	pending []received // to acknowledge once written, in order
	items   []item
	first   time.Time
	out     *output // the writes, once built; kept across retries
}

func (b *batch) reset() {
	clear(b.pending)
	b.pending = b.pending[:0]
	b.items = b.items[:0]
	b.out = nil
}

func (in *Ingester) newWorker(log *slog.Logger) *worker {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &worker{in: in, log: log, timer: t, cur: &batch{}, done: make(chan error, 1)}
}

// run takes messages until ctx ends, then writes what it holds.
func (w *worker) run(ctx context.Context, inbox <-chan received) error {
	// One writing goroutine for the connection's life: a goroutine per
	// batch grew a fresh stack through pgx and franz-go every time.
	w.todo = make(chan *batch)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for b := range w.todo {
			w.done <- w.write(ctx, b)
		}
	}()
	defer func() { close(w.todo); <-writerDone }()
	for {
		var tick <-chan time.Time
		if w.writing == nil && len(w.cur.pending) > 0 {
			tick = w.timer.C
		}
		select {
		case <-ctx.Done():
			return w.drain(inbox, nil)
		case m := <-inbox:
			w.add(m)
			if w.writing == nil && (len(w.cur.items) >= w.in.cfg.BatchSize || w.unacked >= int(w.in.cfg.ReceiveMaximum)) {
				w.dispatch(ctx)
			}
		case err := <-w.done:
			if err != nil {
				// ctx ended during the retries; drain writes it again.
				failed := w.writing
				w.writing = nil
				return w.drain(inbox, failed)
			}
			w.complete(w.writing)
			w.writing = nil
			// What arrived during the write goes now: it has waited as
			// long as the write took.
			if len(w.cur.pending) > 0 {
				w.dispatch(ctx)
			}
		case <-tick:
			w.dispatch(ctx)
		}
	}
}

// dispatch starts writing the filling batch.
func (w *worker) dispatch(ctx context.Context) {
	w.timer.Stop()
	b := w.cur
	w.cur, w.spare = w.spare, nil
	if w.cur == nil {
		w.cur = &batch{}
	}
	w.writing = b
	w.todo <- b
}

// complete acknowledges a written batch and keeps it for reuse.
func (w *worker) complete(b *batch) {
	for _, m := range b.pending {
		w.ack(m)
		if m.pub.QoS > 0 {
			w.unacked--
		}
	}
	w.in.metrics.latency.Observe(time.Since(b.first).Seconds())
	b.reset()
	w.spare = b
}

// drain writes and acknowledges everything already received, within
// DrainTimeout: the batch being written, or failed (the one whose retries
// ctx ended), then what is left. What it cannot write stays unacknowledged.
func (w *worker) drain(inbox <-chan received, failed *batch) error {
	if w.writing != nil {
		if err := <-w.done; err != nil {
			failed = w.writing
		} else {
			w.complete(w.writing)
		}
		w.writing = nil
	}
	for {
		select {
		case m := <-inbox:
			w.add(m)
			continue
		default:
		}
		break
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.in.cfg.DrainTimeout)
	defer cancel()
	for _, b := range []*batch{failed, w.cur} {
		if b == nil || len(b.pending) == 0 {
			continue
		}
		if err := w.write(ctx, b); err != nil {
			return fmt.Errorf("ingester: %d messages not written at shutdown (the broker redelivers them): %w", w.unacked, err)
		}
		w.complete(b)
	}
	return nil
}

// add decodes m into the filling batch, or drops it.
func (w *worker) add(m received) {
	w.current = m.client
	it, reason, err := w.decode(m)
	if err != nil {
		w.drop(m, it.device, reason, err)
		w.ack(m)
		return
	}
	b := w.cur
	if len(b.pending) == 0 {
		b.first = m.at
		if w.writing == nil {
			w.timer.Reset(w.in.cfg.FlushPeriod)
		}
	}
	b.pending = append(b.pending, m)
	if m.pub.QoS > 0 {
		w.unacked++
	}
	b.items = append(b.items, it)
	w.in.metrics.receivedKind[it.kind].Inc()
}

func (w *worker) drop(m received, device uuid.UUID, reason string, err error) {
	w.in.metrics.dropped.WithLabelValues(reason).Inc()
	attrs := []any{"reason", reason, "topic", devicetopic.Truncate(m.pub.Topic), "error", err}
	if device != uuid.Nil {
		attrs = append(attrs, "device", device.String())
	}
	w.log.Warn("ingester dropped a message", attrs...)
}

// ack acknowledges m on the connection it came in on. After a reconnect
// paho's session belongs to the new connection and the broker redelivers
// what the old one left unacknowledged, so acknowledging there is skipped.
func (w *worker) ack(m received) {
	if m.pub.QoS == 0 || m.client != w.current {
		return
	}
	if err := m.client.Ack(m.pub); err != nil {
		w.log.Debug("ingester: ack", "error", err)
	}
}
