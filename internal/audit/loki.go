package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sethvargo/go-retry"
)

// Loki pushes events to Loki's push API (POST /loki/api/v1/push, JSON), one
// stream per organisation and operation, each line the JSON event. Pushing is
// asynchronous and bounded: when Loki is down the queue fills and further
// events are dropped and counted (PostgreSQL still has them all).
type Loki struct {
	url     string
	client  *http.Client
	log     *slog.Logger
	queue   chan Event
	batch   int
	flush   time.Duration
	pushed  prometheus.Counter
	dropped prometheus.Counter
	failed  prometheus.Counter
}

// NewLoki returns a pusher to url, the full push endpoint
// (http://loki:3100/loki/api/v1/push). Run must be running for it to push.
func NewLoki(url string, log *slog.Logger, reg prometheus.Registerer) *Loki {
	l := &Loki{
		url: url, client: &http.Client{Timeout: 10 * time.Second}, log: log,
		queue: make(chan Event, 10000), batch: 500, flush: time.Second,
		pushed: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_audit_loki_pushed_total",
			Help: "Audit events pushed to Loki."}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_audit_loki_dropped_total",
			Help: "Audit events not pushed to Loki because the queue was full (they remain in PostgreSQL)."}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{Name: "flock_audit_loki_failed_total",
			Help: "Audit events given up on after retries (they remain in PostgreSQL)."}),
	}
	if reg != nil {
		reg.MustRegister(l.pushed, l.dropped, l.failed)
	}
	return l
}

// Publish queues ev without blocking.
func (l *Loki) Publish(ev Event) {
	select {
	case l.queue <- ev:
	default:
		l.dropped.Inc()
	}
}

// Run pushes batches until ctx is cancelled, then flushes what is queued
// (for at most five seconds) so a graceful stop loses nothing that Loki takes.
func (l *Loki) Run(ctx context.Context) error {
	ticker := time.NewTicker(l.flush)
	defer ticker.Stop()
	var pending []Event
	for {
		select {
		case ev := <-l.queue:
			pending = append(pending, ev)
			if len(pending) >= l.batch {
				l.push(ctx, pending)
				pending = nil
			}
		case <-ticker.C:
			if len(pending) > 0 {
				l.push(ctx, pending)
				pending = nil
			}
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for {
				select {
				case ev := <-l.queue:
					pending = append(pending, ev)
					continue
				default:
				}
				break
			}
			if len(pending) > 0 {
				l.push(fctx, pending)
			}
			return nil
		}
	}
}

type pushRequest struct {
	Streams []stream `json:"streams"`
}

type stream struct {
	Stream map[string]string `json:"stream"`
	Values [][2]string       `json:"values"`
}

// body groups events into streams labelled by org and action.
func body(events []Event) ([]byte, error) {
	idx := map[[2]string]int{}
	var req pushRequest
	for _, ev := range events {
		k := [2]string{ev.OrgID.String(), ev.Operation}
		i, ok := idx[k]
		if !ok {
			i = len(req.Streams)
			idx[k] = i
			req.Streams = append(req.Streams, stream{Stream: map[string]string{
				"service": "flock-api", "kind": "audit", "org": k[0], "action": k[1]}})
		}
		line, err := json.Marshal(ev)
		if err != nil {
			return nil, err
		}
		req.Streams[i].Values = append(req.Streams[i].Values,
			[2]string{strconv.FormatInt(ev.Time.UnixNano(), 10), string(line)})
	}
	return json.Marshal(req)
}

func (l *Loki) push(ctx context.Context, events []Event) {
	b, err := body(events)
	if err != nil {
		l.failed.Add(float64(len(events)))
		l.log.Error("encode audit events for Loki", "error", err.Error())
		return
	}
	backoff := retry.WithMaxRetries(4, retry.NewExponential(200*time.Millisecond))
	err = retry.Do(ctx, backoff, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.url, bytes.NewReader(b))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := l.client.Do(req)
		if err != nil {
			return retry.RetryableError(err)
		}
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		switch {
		case resp.StatusCode/100 == 2:
			return nil
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
			return retry.RetryableError(fmt.Errorf("loki answered %d: %s", resp.StatusCode, msg))
		default:
			return fmt.Errorf("loki answered %d: %s", resp.StatusCode, msg)
		}
	})
	if err != nil {
		l.failed.Add(float64(len(events)))
		l.log.Warn("push audit events to Loki", "events", len(events), "error", err.Error())
		return
	}
	l.pushed.Add(float64(len(events)))
}
