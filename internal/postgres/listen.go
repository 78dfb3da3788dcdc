package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Listen hears channel's notifications until ctx ends, calling notify with
// each payload. Each time it (re)starts listening it calls synced first,
// once LISTEN is in place, so the caller can catch up on what it may have
// missed while not listening (a notification is only delivered to
// sessions listening when it commits). A lost connection is retried with
// backoff; Listen returns when ctx ends.
func Listen(ctx context.Context, pool *pgxpool.Pool, channel string, synced func(context.Context) error,
	notify func(payload string), log *slog.Logger) {
	ListenWith(ctx, pool, channel, Listening{Synced: synced, Notify: notify}, log)
}

// Listening is what ListenWith calls: Synced and Notify as for Listen, and
// Lost (when set) each time listening stops, so a caller that reports
// whether it hears notifications (readiness) can say it no longer does.
type Listening struct {
	Synced func(context.Context) error
	Notify func(payload string)
	Lost   func()
}

// ListenWith is Listen with a Lost callback.
func ListenWith(ctx context.Context, pool *pgxpool.Pool, channel string, l Listening, log *slog.Logger) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := listenOnce(ctx, pool, channel, l.Synced, l.Notify)
		if l.Lost != nil {
			l.Lost()
		}
		if ctx.Err() != nil {
			return
		}
		log.Warn("listening for notifications failed; retrying", "channel", channel, "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

func listenOnce(ctx context.Context, pool *pgxpool.Pool, channel string, synced func(context.Context) error, notify func(string)) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire a connection: %w", err)
	}
	// A connection that has listened goes back closed, never to the pool.
	defer func() {
		_ = conn.Conn().Close(context.WithoutCancel(ctx))
		conn.Release()
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return fmt.Errorf("listen %s: %w", channel, err)
	}
	if synced != nil {
		if err := synced(ctx); err != nil {
			return err
		}
	}
	for {
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait for a notification on %s: %w", channel, err)
		}
		notify(n.Payload)
	}
}
