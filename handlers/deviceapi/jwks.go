package deviceapi

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
)

// JwksGet publishes the current and the previous device-token key.
func (h *DeviceAPI) JwksGet(ctx context.Context, _ api.JwksGetRequestObject) (api.JwksGetResponseObject, error) {
	set, err := h.Tokens.JWKS(ctx)
	if err != nil {
		return nil, fmt.Errorf("device token keys: %w", err)
	}
	b, err := json.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("encode JWKS: %w", err)
	}
	var out api.JWKS
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("decode JWKS: %w", err)
	}
	return api.JwksGet200JSONResponse(out), nil
}
