package buildsrc

import (
	"fmt"
	"strings"
)

// Error codes. They are part of the API: callers map them to responses, so
// they never change meaning.
const (
	CodeSourceInvalid      = "source_invalid"
	CodePathEscapes        = "path_escapes"
	CodeComposeMissing     = "compose_missing"
	CodeComposeInvalid     = "compose_invalid"
	CodeComposeUnsupported = "compose_unsupported"
	CodeServiceInvalid     = "service_invalid"
	CodeDockerfileMissing  = "dockerfile_missing"
	CodeDockerfileInvalid  = "dockerfile_invalid"
)

// Error is why an upload was refused. Detail is meant for the developer who
// uploaded it, so it names the offending path, service or key.
type Error struct {
	Code   string
	Detail string
	Fields []FieldError
	err    error
}

// FieldError names one offending compose key (like
// "services.web.build.network") or tar path.
type FieldError struct {
	Field  string
	Detail string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Code)
	b.WriteString(": ")
	b.WriteString(e.Detail)
	if len(e.Fields) > 1 {
		for i, f := range e.Fields {
			if i == 0 {
				b.WriteString(" (")
			} else {
				b.WriteString("; ")
			}
			b.WriteString(f.Field + ": " + f.Detail)
		}
		b.WriteString(")")
	}
	return b.String()
}

// Unwrap gives the underlying read or parse error, if any, so that callers
// can still tell an I/O failure of the spool file from bad input.
func (e *Error) Unwrap() error { return e.err }

// newError makes an *Error; a non-nil cause is both told in Detail, since
// the developer needs it (a YAML line number, say), and kept for Unwrap.
func newError(code string, cause error, format string, args ...any) *Error {
	d := fmt.Sprintf(format, args...)
	if cause != nil {
		d = strings.TrimSuffix(d, ".") + ": " + cause.Error() + "."
	}
	return &Error{Code: code, Detail: d, err: cause}
}

// listError names every field in Detail; with one field, its detail too, so
// that Detail alone says what is wrong.
func listError(code, what string, fields []FieldError) *Error {
	var d string
	if len(fields) == 1 {
		d = fmt.Sprintf("%s: %s: %s.", what, fields[0].Field, fields[0].Detail)
	} else {
		names := make([]string, len(fields))
		for i, f := range fields {
			names[i] = f.Field
		}
		d = fmt.Sprintf("%s: %s.", what, strings.Join(names, ", "))
	}
	return &Error{Code: code, Detail: d, Fields: fields}
}
