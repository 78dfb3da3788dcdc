// Package deltas serves devices the deltas between their images
// (GET /device/v1/deltas).
package deltas

import (
	"context"
	"net/http"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/internal/http/problem"
)

// Deltas implements the device's delta operation.
type Deltas struct{}

// DeviceDeltaGet is a skeleton until the delta target lands (issue 14).
func (h *Deltas) DeviceDeltaGet(ctx context.Context, req api.DeviceDeltaGetRequestObject) (api.DeviceDeltaGetResponseObject, error) {
	return nil, problem.Errorf(http.StatusNotImplemented, "not_implemented", "deltas are not served yet")
}
