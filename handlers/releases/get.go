package releases

import (
	"context"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// ReleaseGet returns a release.
func (h *Releases) ReleaseGet(ctx context.Context, req api.ReleaseGetRequestObject) (api.ReleaseGetResponseObject, error) {
	r, err := db.New(h.Pool).ReleaseGet(ctx, req.ReleaseId)
	if err != nil {
		return nil, fmt.Errorf("load release %s: %w", req.ReleaseId, err)
	}
	out, err := Release(r)
	if err != nil {
		return nil, err
	}
	return api.ReleaseGet200JSONResponse(out), nil
}
