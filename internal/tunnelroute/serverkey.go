package tunnelroute

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/wgtunnel"
)

// ServerKey is the tunnel servers' private key: configured
// (FLOCK_TUNNEL_PRIVATE_KEY, base64 as `wg genkey` prints it), or else made
// once and kept in PostgreSQL, where every replica and the API (which
// hands devices the public half) find the same one.
func ServerKey(ctx context.Context, pool *pgxpool.Pool, configured string) (wgtunnel.Key, error) {
	if configured != "" {
		k, err := wgtunnel.ParseKey(configured)
		if err != nil {
			return k, fmt.Errorf("FLOCK_TUNNEL_PRIVATE_KEY: %w", err)
		}
		return k, nil
	}
	q := db.New(pool)
	fresh, err := wgtunnel.GenerateKey()
	if err != nil {
		return fresh, err
	}
	if err := q.TunnelServerKeyInit(ctx, fresh[:]); err != nil {
		return fresh, fmt.Errorf("store the tunnel server key: %w", err)
	}
	b, err := q.TunnelServerKey(ctx)
	if err != nil {
		return fresh, fmt.Errorf("load the tunnel server key: %w", err)
	}
	var k wgtunnel.Key
	copy(k[:], b)
	return k, nil
}
