// Package deltas serves devices the deltas between their images
// (GET /device/v1/deltas): a device that runs one image of a service and is
// targeted at another asks for the delta between them instead of pulling
// the changed layers. The handler finds both images among the device's own
// releases, stores the delta's row and queues its computation
// (workers/delta computes it), and serves it from the blob store once ready.
package deltas

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/internal/bus"
)

// Publisher publishes delta requests (*bus.Bus).
type Publisher interface {
	Publish(ctx context.Context, recs ...bus.Record) error
}

// Blobs reads stored deltas (*blob.Store).
type Blobs interface {
	Get(ctx context.Context, key string) (io.ReadCloser, int64, error)
}

// Deltas implements the device's delta operation.
type Deltas struct {
	Pool *pgxpool.Pool
	// Bus carries delta requests to the delta workers; nil leaves new
	// deltas pending (nothing computes them).
	Bus Publisher
	// Blobs holds the computed deltas; nil answers a ready delta as not
	// available (the device pulls the layers).
	Blobs Blobs
	Log   *slog.Logger

	// RetryAfter is the Retry-After of a 202, and how long a pending
	// delta's request may go unanswered before an ask publishes it again.
	// Default 5s.
	RetryAfter time.Duration
}

const (
	defaultRetryAfter = 5 * time.Second
	// publishTimeout bounds publishing a request within a device's ask;
	// a request that did not go out is published by a later ask.
	publishTimeout = 5 * time.Second
)

func (h *Deltas) retryAfter() time.Duration {
	if h.RetryAfter > 0 {
		return h.RetryAfter
	}
	return defaultRetryAfter
}

func (h *Deltas) log() *slog.Logger {
	if h.Log != nil {
		return h.Log
	}
	return slog.Default()
}
