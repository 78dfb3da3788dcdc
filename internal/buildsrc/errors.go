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
	for i, f := range e.Fields {
		if i == 0 {
			b.WriteString(" (")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(f.Field)
		b.WriteString(": ")
		b.WriteString(f.Detail)
		if i == len(e.Fields)-1 {
			b.WriteString(")")
		}
	}
	if e.err != nil {
		b.WriteString(": ")
		b.WriteString(e.err.Error())
	}
	return b.String()
}

// Unwrap gives the underlying read or parse error, if any, so that callers
// can still tell an I/O failure of the spool file from bad input.
func (e *Error) Unwrap() error { return e.err }

func newError(code string, err error, format string, args ...any) *Error {
	return &Error{Code: code, Detail: fmt.Sprintf(format, args...), err: err}
}
