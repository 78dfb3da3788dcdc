package restapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/flock-io/flock-api/internal/http/problem"
)

// The spec validator checks a body's first JSON value against its schema and
// nothing else, and a string that holds NUL is a valid string to it. But
// PostgreSQL refuses NUL in text and jsonb (a 500 after the handler ran), and
// the bytes after the first value would be ignored by every decoder down the
// line. checkInput is the one place that holds the whole input to what the
// rest of the server can store: every query parameter and every string and
// property name of a JSON body, at any depth.

const (
	nulDetail  = "must not contain the NUL character (U+0000)"
	utf8Detail = "must be valid UTF-8"
)

// checkInput returns the problem with the request's query or body, or nil.
// It reads the body of an operation that takes one and leaves it readable
// again for the validator and the handler. The error is for a body that
// could not be read at all.
func checkInput(r *http.Request, op *openapi3.Operation) (*problem.Error, error) {
	fields := queryFields(r)
	body, err := jsonBody(r, op)
	if err != nil {
		return nil, err
	}
	if len(bytes.Trim(body, jsonSpace)) > 0 {
		v, bad := parse(body)
		if bad != nil {
			return bad, nil
		}
		fields = append(fields, nulFields(v)...)
	}
	if len(fields) == 0 {
		return nil, nil
	}
	return invalid(fields), nil
}

// jsonSpace is the whitespace JSON allows around values (RFC 8259 §2).
const jsonSpace = " \t\r\n"

// queryFields names each query parameter (known to the operation or not)
// whose name or a value PostgreSQL could not store.
func queryFields(r *http.Request) []problem.FieldError {
	// A query that does not parse is the validator's to report; what did
	// parse is checked here.
	q := r.URL.Query()
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	sort.Strings(names)
	var out []problem.FieldError
	for _, name := range names {
		detail := textDetail(name)
		for _, v := range q[name] {
			if detail == "" {
				detail = textDetail(v)
			}
		}
		if detail != "" {
			out = append(out, problem.FieldError{In: "query", Field: name, Detail: detail})
		}
	}
	return out
}

func textDetail(s string) string {
	switch {
	case strings.IndexByte(s, 0) >= 0:
		return nulDetail
	case !utf8.ValidString(s):
		return utf8Detail
	}
	return ""
}

// jsonBody reads the body when the operation takes one in the JSON media
// type the request names; otherwise the validator alone judges it (a media
// type the operation does not take is its 415).
func jsonBody(r *http.Request, op *openapi3.Operation) ([]byte, error) {
	if op.RequestBody == nil || op.RequestBody.Value == nil || r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) ||
		op.RequestBody.Value.Content.Get(mt) == nil {
		return nil, nil
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var maxErr *http.MaxBytesError
		if errors.As(err, &maxErr) {
			return nil, problem.TooLarge(maxErr.Limit)
		}
		return nil, fmt.Errorf("read request body: %w", err)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return body, nil
}

// parse decodes a body that must be exactly one JSON value in UTF-8, give or
// take whitespace around it; anything else is malformed.
func parse(body []byte) (any, *problem.Error) {
	bad := func(detail string) *problem.Error {
		return &problem.Error{Status: http.StatusBadRequest, Code: "malformed_body", Detail: detail}
	}
	if !utf8.Valid(body) {
		// RFC 8259 §8.1; decoders would silently replace the bad bytes.
		return nil, bad("the request body is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, bad("the request body is not valid JSON: " + err.Error())
	}
	if rest := bytes.TrimLeft(body[dec.InputOffset():], jsonSpace); len(rest) > 0 {
		return nil, bad(fmt.Sprintf("the request body must be one JSON value; %q follows it at byte %d",
			preview(rest), len(body)-len(rest)))
	}
	return v, nil
}

func preview(b []byte) string {
	const limit = 20
	if len(b) <= limit {
		return string(b)
	}
	// Cut on a rune boundary: the body is valid UTF-8 by now.
	n := limit
	for n > 0 && !utf8.RuneStart(b[n]) {
		n--
	}
	return string(b[:n]) + "…"
}

// nulFields names, by JSON pointer, every string and property name under v
// that holds NUL.
func nulFields(v any) []problem.FieldError {
	var out []problem.FieldError
	var walk func(v any, ptr string)
	walk = func(v any, ptr string) {
		switch x := v.(type) {
		case string:
			if strings.IndexByte(x, 0) >= 0 {
				out = append(out, problem.FieldError{In: "body", Field: ptr, Detail: nulDetail})
			}
		case []any:
			for i, e := range x {
				walk(e, ptr+"/"+strconv.Itoa(i))
			}
		case map[string]any:
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				p := pointer([]string{k})
				if strings.IndexByte(k, 0) >= 0 {
					out = append(out, problem.FieldError{In: "body", Field: ptr + p, Detail: "the property name " + nulDetail})
				}
				walk(x[k], ptr+p)
			}
		}
	}
	walk(v, "")
	return out
}

// invalid is the 400 that lists fields.
func invalid(fields []problem.FieldError) *problem.Error {
	detail := fmt.Sprintf("%d invalid field(s)", len(fields))
	if len(fields) == 1 {
		detail = describe(fields[0])
	}
	return &problem.Error{Status: http.StatusBadRequest, Code: "validation_failed", Detail: detail, Errors: fields}
}
