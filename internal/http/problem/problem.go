// Package problem is the single place where errors become RFC 9457
// problem+json responses. Handlers and middleware return or pass errors;
// only Write decides status, code and body.
package problem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/flock-io/flock-api/internal/http/reqinfo"
)

// ContentType is the media type of every error body.
const ContentType = "application/problem+json"

// Problem is the body of every error response.
type Problem struct {
	Type      string       `json:"type"`
	Title     string       `json:"title"`
	Status    int          `json:"status"`
	Detail    string       `json:"detail,omitempty"`
	Instance  string       `json:"instance,omitempty"`
	Code      string       `json:"code"`
	RequestID string       `json:"request_id"`
	Errors    []FieldError `json:"errors,omitempty"`
}

// FieldError names one invalid part of a request.
type FieldError struct {
	In     string `json:"in"`
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

// Error is an error that knows how it should be shown to the client. Handlers
// return it (usually through the constructors below); anything else that
// reaches Write is an internal error whose text is logged, never shown.
type Error struct {
	Status int
	Code   string
	Detail string
	Errors []FieldError
	// Header is added to the response, e.g. Allow for 405.
	Header http.Header
	// Err is the cause, logged but never sent.
	Err error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Detail, e.Err)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Detail)
}

func (e *Error) Unwrap() error { return e.Err }

// New returns an Error with the given status, code and detail.
func New(status int, code, detail string) *Error {
	return &Error{Status: status, Code: code, Detail: detail}
}

// Errorf is New with a formatted detail.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Detail: fmt.Sprintf(format, args...)}
}

// Sentinels for the application layer: wrap them with context
// (fmt.Errorf("load fleet %s: %w", id, problem.ErrNotFound)) and Write maps
// them, so stores need not know about HTTP.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// titles are the fixed, per-code summaries (RFC 9457 §3.1.3: the title does
// not change from occurrence to occurrence).
var titles = map[string]string{
	"validation_failed":      "Request validation failed",
	"malformed_body":         "Malformed request body",
	"not_found":              "Not found",
	"method_not_allowed":     "Method not allowed",
	"body_too_large":         "Request body too large",
	"unsupported_media_type": "Unsupported media type",
	"internal_error":         "Internal server error",
	"conflict":               "Conflict",
	"unauthorized":           "Unauthorized",
	"forbidden":              "Forbidden",
	"unavailable":            "Service unavailable",
}

// Title returns the fixed title for a code, falling back to the HTTP status text.
func Title(code string, status int) string {
	if t, ok := titles[code]; ok {
		return t
	}
	return http.StatusText(status)
}

// From converts any error into the problem it should produce. The second
// result says whether it is an internal error (logged at error level).
func From(err error) (*Error, bool) {
	var pe *Error
	switch {
	case errors.As(err, &pe):
		return pe, pe.Status >= 500
	case errors.Is(err, ErrNotFound):
		return &Error{Status: http.StatusNotFound, Code: "not_found", Detail: err.Error()}, false
	case errors.Is(err, ErrConflict):
		return &Error{Status: http.StatusConflict, Code: "conflict", Detail: err.Error()}, false
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Detail: "the request timed out", Err: err}, true
	default:
		return &Error{Status: http.StatusInternalServerError, Code: "internal_error",
			Detail: "the server failed to handle this request; quote the request id when reporting it", Err: err}, true
	}
}

// Write sends err as problem+json and logs it with the request id. The error's
// text reaches the client only when it is a *Error or a mapped sentinel.
func Write(w http.ResponseWriter, r *http.Request, err error) {
	pe, internal := From(err)
	reqID := reqinfo.ID(r.Context())
	if internal {
		slog.Default().LogAttrs(r.Context(), slog.LevelError, "request failed",
			slog.Int("status", pe.Status), slog.String("code", pe.Code), slog.String("error", err.Error()))
	} else {
		slog.Default().LogAttrs(r.Context(), slog.LevelInfo, "request refused",
			slog.Int("status", pe.Status), slog.String("code", pe.Code), slog.String("detail", pe.Detail))
	}

	p := Problem{
		Type:      "urn:flock:problem:" + pe.Code,
		Title:     Title(pe.Code, pe.Status),
		Status:    pe.Status,
		Detail:    pe.Detail,
		Instance:  r.URL.Path,
		Code:      pe.Code,
		RequestID: reqID,
		Errors:    pe.Errors,
	}
	h := w.Header()
	for k, vs := range pe.Header {
		for _, v := range vs {
			h.Add(k, v)
		}
	}
	h.Set("Content-Type", ContentType)
	h.Set("Cache-Control", "no-store")
	h.Del("Content-Length")
	h.Del("ETag")
	w.WriteHeader(pe.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// TooLarge is the 413 for a request body over limit bytes.
func TooLarge(limit int64) *Error {
	return Errorf(http.StatusRequestEntityTooLarge, "body_too_large", "the request body exceeds the limit of %d bytes", limit)
}

// Invalid is the 400 for one invalid part of a request found by a handler
// (the spec validator reports the rest): in is body, query, path or header.
func Invalid(in, field, detail string) *Error {
	return &Error{Status: http.StatusBadRequest, Code: "validation_failed", Detail: detail,
		Errors: []FieldError{{In: in, Field: field, Detail: detail}}}
}
