package builder

import (
	"context"
	"sync"
	"time"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/builds"
)

// logBuffer collects an image's output lines and writes them to the build's
// log in batches (every flushEvery or flushLines lines), so a chatty build
// costs a few statements a second, not one a line.
type logBuffer struct {
	w   *Worker
	img db.BuildImage

	mu      sync.Mutex
	pending []builds.Line
	masker  *builds.Masker
	kick    chan struct{}
}

const (
	flushEvery = 200 * time.Millisecond
	flushLines = 500
)

func newLogBuffer(w *Worker, img db.BuildImage) *logBuffer {
	return &logBuffer{w: w, img: img, kick: make(chan struct{}, 1)}
}

func (l *logBuffer) setMask(m *builds.Masker) {
	l.mu.Lock()
	l.masker = m
	l.mu.Unlock()
}

func (l *logBuffer) mask(s string) string {
	l.mu.Lock()
	m := l.masker
	l.mu.Unlock()
	return m.Mask(s)
}

func (l *logBuffer) add(service, text string) {
	l.mu.Lock()
	l.pending = append(l.pending, builds.Line{TS: time.Now(), Service: service, Arch: l.img.Architecture, Text: l.masker.Mask(text)})
	full := len(l.pending) >= flushLines
	l.mu.Unlock()
	if full {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
}

func (l *logBuffer) run(ctx context.Context) {
	t := time.NewTicker(flushEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-l.kick:
		}
		l.flush(ctx)
	}
}

func (l *logBuffer) flush(ctx context.Context) {
	l.mu.Lock()
	batch := l.pending
	l.pending = nil
	l.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	if err := builds.Append(ctx, l.w.cfg.Pool, l.img.BuildID, l.w.cfg.LogLimit, batch); err != nil && ctx.Err() == nil {
		l.w.log.WarnContext(ctx, "build log: append", "build_id", l.img.BuildID, "lines", len(batch), "error", err.Error())
	}
}
