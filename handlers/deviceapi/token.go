package deviceapi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/devicetoken"
)

// DeviceToken trades an assertion signed with the device's key for a
// 15-minute device token. A deleted device, a bad signature and a replayed
// assertion are all 401.
func (h *DeviceAPI) DeviceToken(ctx context.Context, req api.DeviceTokenRequestObject) (api.DeviceTokenResponseObject, error) {
	id, err := devicetoken.AssertionSubject(req.Body.Assertion)
	if err != nil {
		return nil, unauthorized("invalid_assertion", err.Error())
	}
	d, err := db.New(h.Pool).DeviceGet(ctx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, unauthorized("unknown_device", fmt.Sprintf("device %s is not registered (or was deleted)", id))
	}
	if err != nil {
		return nil, fmt.Errorf("load device %s: %w", id, err)
	}
	err = h.Tokens.VerifyAssertion(ctx, h.Pool, req.Body.Assertion, d.ID, d.PublicKey)
	switch {
	case errors.Is(err, devicetoken.ErrReplayedAssertion):
		return nil, unauthorized("assertion_replayed", "this assertion was used before; sign a new one with a fresh jti")
	case errors.Is(err, devicetoken.ErrInvalidAssertion):
		return nil, unauthorized("invalid_assertion", err.Error())
	case err != nil:
		return nil, fmt.Errorf("verify assertion of %s: %w", id, err)
	}
	tok, exp, err := h.Tokens.Issue(ctx, d.ID, d.OrgID, d.FleetID)
	if err != nil {
		return nil, fmt.Errorf("issue token for %s: %w", id, err)
	}
	return api.DeviceToken200JSONResponse{AccessToken: tok, TokenType: api.Bearer, ExpiresAt: exp,
		ExpiresIn: int(time.Until(exp).Seconds())}, nil
}
