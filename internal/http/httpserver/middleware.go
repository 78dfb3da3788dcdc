package httpserver

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/http/reqinfo"
)

// statusWriter remembers the status and size of a response. It forwards
// Flush and Unwrap so streaming responses and http.ResponseController work.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ReadFrom keeps net/http's sendfile for files served through the chain
// (the registry proxy's cached blobs).
func (w *statusWriter) ReadFrom(src io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(src)
	} else {
		n, err = io.Copy(struct{ io.Writer }{w.ResponseWriter}, src)
	}
	w.bytes += n
	return n, err
}

// access logs and counts every request once it is served. Probe and scrape
// requests log at debug so they do not drown the access log.
func (s *Server) access(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		inflight := s.metrics.InFlight()
		inflight.Inc()
		defer func() {
			inflight.Dec()
			status := sw.status
			if status == 0 {
				status = http.StatusOK
			}
			sent := sw.bytes
			if r.Method == http.MethodHead {
				// The handler wrote GET's body; the server sent none of it.
				sent = 0
			}
			elapsed := time.Since(start)
			s.metrics.ObserveRequest(r, status, elapsed)
			level := accessLevel(r.URL.Path, status)
			s.log.LogAttrs(r.Context(), level, "request",
				slog.String("method", r.Method), slog.String("path", r.URL.Path),
				slog.String("operation", reqinfo.Operation(r.Context())),
				slog.Int("status", status), slog.Int64("bytes", sent),
				slog.Duration("duration", elapsed), slog.String("remote", r.RemoteAddr))
		}()
		next.ServeHTTP(sw, r)
	})
}

// recoverer turns a handler panic into a 500 problem that carries the request
// id and none of the panic's text; the stack goes to the log only.
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw, _ := w.(*statusWriter)
		defer func() {
			rec := recover()
			if rec == nil {
				return
			}
			if rec == http.ErrAbortHandler {
				panic(rec)
			}
			s.log.ErrorContext(r.Context(), "handler panicked",
				slog.String("panic", fmt.Sprint(rec)), slog.String("stack", string(debug.Stack())))
			if sw != nil && sw.status != 0 {
				// Headers are gone; the best we can do is cut the response short.
				panic(http.ErrAbortHandler)
			}
			problem.Write(w, r, &problem.Error{Status: http.StatusInternalServerError, Code: "internal_error",
				Detail: "the server failed to handle this request; quote the request id when reporting it",
				Err:    fmt.Errorf("panic: %v", rec)})
		}()
		next.ServeHTTP(w, r)
	})
}

// limitBody refuses bodies over the limit: at once when Content-Length says
// so, otherwise when a reader crosses it (the validator maps that to 413).
func (s *Server) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, m := range s.unlimitedIf {
			if m(r) {
				next.ServeHTTP(w, r)
				return
			}
		}
		for _, p := range s.unlimited {
			if strings.HasPrefix(r.URL.Path, p) {
				next.ServeHTTP(w, r)
				return
			}
		}
		if r.ContentLength > s.cfg.BodyLimit {
			problem.Write(w, r, problem.TooLarge(s.cfg.BodyLimit))
			return
		}
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = http.MaxBytesReader(w, r.Body, s.cfg.BodyLimit)
		}
		next.ServeHTTP(w, r)
	})
}

// accessLevel keeps routine traffic out of the info log: probes and scrapes,
// and what devices do all day on the device API (poll their target state,
// report, renew tokens), which with a fleet of any size would drown every
// other line. A device request that fails stays at info.
func accessLevel(path string, status int) slog.Level {
	switch {
	case path == "/healthz" || path == "/readyz" || path == "/metrics":
		return slog.LevelDebug
	case strings.HasPrefix(path, "/device/") && status < 400:
		return slog.LevelDebug
	}
	return slog.LevelInfo
}
