package streams

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// Subprotocol is the WebSocket subprotocol of the streams; a browser
// offers it beside `bearer.<token>` (internal/auth reads the token).
const Subprotocol = "flock.v1"

const (
	// writeTimeout bounds one flush to a client. The hub never waits on
	// a client (its queue drops it), so this only frees the request of a
	// peer that stopped reading.
	writeTimeout = 30 * time.Second
	// slowTimeout bounds the last words to a client dropped for being
	// slow: its socket is likely full already.
	slowTimeout = 2 * time.Second
)

var heartbeat = []byte(": heartbeat\n\n")

// sse writes Server-Sent Events.
type sse struct {
	w     http.ResponseWriter
	rc    *http.ResponseController
	armed bool
}

// OpenSSE returns the open function of a Server-Sent Events stream: it
// answers 200 text/event-stream, flushed, with no server write timeout.
func OpenSSE(w http.ResponseWriter) func() (Sink, error) {
	return func() (Sink, error) {
		rc := http.NewResponseController(w)
		// The server's WriteTimeout (if one is set) would cut a stream
		// that is meant to last; each flush gets its own deadline instead.
		if err := rc.SetWriteDeadline(time.Time{}); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return nil, err
		}
		h := w.Header()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-store")
		// nginx buffers responses unless told not to.
		h.Set("X-Accel-Buffering", "no")
		w.WriteHeader(http.StatusOK)
		s := &sse{w: w, rc: rc}
		return s, s.Flush()
	}
}

func (s *sse) arm(d time.Duration) {
	_ = s.rc.SetWriteDeadline(time.Now().Add(d))
	s.armed = true
}

func (s *sse) Send(ev *Event) error {
	if !s.armed {
		s.arm(writeTimeout)
	}
	_, err := s.w.Write(ev.SSE())
	return err
}

func (s *sse) Flush() error {
	if !s.armed {
		s.arm(writeTimeout)
	}
	err := s.rc.Flush()
	s.armed = false
	return err
}

func (s *sse) Heartbeat() error {
	s.arm(writeTimeout)
	if _, err := s.w.Write(heartbeat); err != nil {
		return err
	}
	return s.Flush()
}

func (s *sse) Slow() error {
	s.arm(slowTimeout)
	_, _ = s.w.Write(slowEvent().SSE())
	_ = s.rc.Flush()
	return nil
}

func (s *sse) Stop(code, detail string) error {
	s.arm(slowTimeout)
	_, _ = s.w.Write(Control(TypeError, "", code, detail).SSE())
	_ = s.rc.Flush()
	return nil
}

func slowEvent() *Event {
	return Control(TypeError, "", "slow_consumer",
		"the stream was dropped because the client did not read its events fast enough; reconnect with the last event id to resume")
}

// ws writes WebSocket messages.
type ws struct {
	c   *websocket.Conn
	ctx context.Context
}

// OpenWebSocket returns the open function of a WebSocket stream: it
// upgrades the request (selecting Subprotocol) and starts reading the
// peer's control frames; cancel is called when the connection closes.
func OpenWebSocket(w http.ResponseWriter, r *http.Request, cancel context.CancelFunc) func() (Sink, error) {
	return func() (Sink, error) {
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
			Subprotocols: []string{Subprotocol},
			// Streams authenticate with a bearer token the page must
			// present, never a cookie, so a page of another origin gains
			// nothing the origin check would keep from it; browsers on
			// other origins (dashboards) must be able to connect.
			InsecureSkipVerify: true,
		})
		if err != nil {
			return nil, err
		}
		// A WebSocket client sends nothing but control frames; reading
		// them answers pings, sees pongs and notices a closed peer.
		// coder/websocket needs a goroutine for that (CloseRead).
		read := c.CloseRead(context.Background())
		context.AfterFunc(read, cancel)
		return &ws{c: c, ctx: read}, nil
	}
}

func (s *ws) Send(ev *Event) error {
	ctx, cancel := context.WithTimeout(s.ctx, writeTimeout)
	defer cancel()
	return s.c.Write(ctx, websocket.MessageText, ev.JSON())
}

func (s *ws) Flush() error { return nil }

func (s *ws) Heartbeat() error {
	ctx, cancel := context.WithTimeout(s.ctx, writeTimeout)
	defer cancel()
	return s.c.Ping(ctx)
}

func (s *ws) Slow() error {
	ctx, cancel := context.WithTimeout(s.ctx, slowTimeout)
	defer cancel()
	_ = s.c.Write(ctx, websocket.MessageText, slowEvent().JSON())
	return s.c.Close(websocket.StatusPolicyViolation, "slow consumer")
}

func (s *ws) Stop(code, detail string) error {
	ctx, cancel := context.WithTimeout(s.ctx, slowTimeout)
	defer cancel()
	_ = s.c.Write(ctx, websocket.MessageText, Control(TypeError, "", code, detail).JSON())
	return s.c.Close(websocket.StatusPolicyViolation, strings.ReplaceAll(code, "_", " "))
}

// Close ends a WebSocket stream that ended for another reason than a
// slow client.
func (s *ws) close(err error) {
	if err == nil {
		_ = s.c.Close(websocket.StatusGoingAway, "stream ended")
		return
	}
	_ = s.c.CloseNow()
}

// ServeWebSocket runs st over a WebSocket and closes the connection when
// it ends. Errors before the upgrade are returned for an HTTP answer.
func (h *Hub) ServeWebSocket(ctx context.Context, w http.ResponseWriter, r *http.Request, st *Stream) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var sink *ws
	open := OpenWebSocket(w, r, cancel)
	err := h.Serve(ctx, st, func() (Sink, error) {
		s, err := open()
		if err == nil {
			sink = s.(*ws)
		}
		return s, err
	})
	if sink == nil {
		return err
	}
	if err == errTold {
		return nil
	}
	sink.close(err)
	return nil
}

// ServeSSE runs st as Server-Sent Events. Errors before the response
// started are returned for an HTTP answer; after, the stream just ends.
// On an HTTP/1.1 connection the stream takes the connection over
// (OpenRawSSE) and outlives the request.
func (h *Hub) ServeSSE(ctx context.Context, w http.ResponseWriter, st *Stream) error {
	opened := false
	open := OpenSSE(w)
	if canHijack(w) {
		open = OpenRawSSE(w)
	}
	err := h.Serve(ctx, st, func() (Sink, error) {
		opened = true
		return open()
	})
	if opened {
		return nil
	}
	return err
}

func canHijack(w http.ResponseWriter) bool {
	for {
		if _, ok := w.(http.Hijacker); ok {
			return true
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return false
		}
		w = u.Unwrap()
	}
}

// rawSSE writes Server-Sent Events straight to a connection taken over
// from net/http: no request goroutines, no server buffers, one write per
// flush.
type rawSSE struct {
	c   net.Conn
	buf []byte
}

// OpenRawSSE returns the open function of a stream that takes the
// connection over: it writes the response head itself (with the headers
// set so far, a close-delimited body) and returns a sink that owns the
// connection.
func OpenRawSSE(w http.ResponseWriter) func() (Sink, error) {
	return func() (Sink, error) {
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return nil, err
		}
		h := w.Header().Clone()
		h.Set("Content-Type", "text/event-stream")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Accel-Buffering", "no")
		h.Set("Connection", "close")
		h.Del("Content-Length")
		var head bytes.Buffer
		head.WriteString("HTTP/1.1 200 OK\r\n")
		_ = h.Write(&head)
		head.WriteString("\r\n")
		// Whatever the server had buffered is written before the head;
		// the reader's buffer is dropped (a stream's client sends nothing).
		if err := brw.Writer.Flush(); err != nil {
			c.Close()
			return nil, err
		}
		_ = c.SetReadDeadline(time.Time{})
		s := &rawSSE{c: c, buf: head.Bytes()}
		if err := s.Flush(); err != nil {
			c.Close()
			return nil, err
		}
		return s, nil
	}
}

func (s *rawSSE) Send(ev *Event) error {
	s.buf = append(s.buf, ev.SSE()...)
	return nil
}

func (s *rawSSE) Flush() error {
	if len(s.buf) == 0 {
		return nil
	}
	_ = s.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, err := s.c.Write(s.buf)
	if cap(s.buf) > 4<<10 {
		s.buf = nil // an idle stream keeps no burst's buffer
	} else {
		s.buf = s.buf[:0]
	}
	return err
}

func (s *rawSSE) Heartbeat() error {
	s.buf = append(s.buf, heartbeat...)
	return s.Flush()
}

func (s *rawSSE) Slow() error {
	_ = s.c.SetWriteDeadline(time.Now().Add(slowTimeout))
	_, _ = s.c.Write(slowEvent().SSE())
	return nil
}

func (s *rawSSE) Stop(code, detail string) error {
	_ = s.c.SetWriteDeadline(time.Now().Add(slowTimeout))
	_, _ = s.c.Write(Control(TypeError, "", code, detail).SSE())
	return nil
}

func (s *rawSSE) abort() { _ = s.c.SetWriteDeadline(time.Now()) }

func (s *rawSSE) close() { _ = s.c.Close() }
