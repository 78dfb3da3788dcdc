// Package benchapp holds what every benchmark program does to talk to the
// flock-api process it started.
package benchapp

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/internal/app"
	"github.com/flock-io/flock-api/internal/devoidc"
)

// Token mints a user token of the dev OIDC provider of a --dev process
// whose public URL is publicURL, from the provider's keys in its database.
func Token(ctx context.Context, pool *pgxpool.Pool, publicURL string) (string, error) {
	prov, err := devoidc.New(ctx, pool, app.DevIssuer(publicURL), app.DevAudience)
	if err != nil {
		return "", fmt.Errorf("dev OIDC provider: %w", err)
	}
	token, err := prov.Mint(ctx, "bench@example.com", "", 2*time.Hour)
	if err != nil {
		return "", fmt.Errorf("mint a bench token: %w", err)
	}
	return token, nil
}
