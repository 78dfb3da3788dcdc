// Package tags checks the free-form key/value labels of fleets, devices and
// releases beyond what the OpenAPI schema can say (OpenAPI 3.0 cannot bound
// property names).
package tags

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/flock-io/flock-api/internal/http/problem"
)

// Check refuses keys that are empty, longer than 100 characters or contain
// control characters. A nil map is an empty one.
func Check(t *map[string]string) (map[string]string, error) {
	if t == nil || *t == nil {
		return map[string]string{}, nil
	}
	for k := range *t {
		if k == "" || len(k) > 100 || strings.ContainsFunc(k, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return nil, &problem.Error{Status: http.StatusBadRequest, Code: "validation_failed",
				Detail: fmt.Sprintf("tag key %q must be 1 to 100 printable characters", k),
				Errors: []problem.FieldError{{In: "body", Field: "/tags", Detail: fmt.Sprintf("bad key %q", k)}}}
		}
	}
	return *t, nil
}
