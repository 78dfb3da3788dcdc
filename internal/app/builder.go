package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/buildah"
	"github.com/flock-io/flock-api/internal/builds"
	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/internal/registryproxy"
	"github.com/flock-io/flock-api/workers/builder"
)

// initBuilder runs the builder: it takes build requests from Kafka (and
// polls for the images a record did not bring) and builds the images this
// host can build with buildah.
func (a *App) initBuilder(ctx context.Context) (*modules.Service, error) {
	engine, err := buildah.New("")
	if err != nil {
		return nil, fmt.Errorf("builder: %w (scripts/services.sh builder-tools installs it)", err)
	}
	v, err := engine.Version(ctx)
	if err != nil {
		return nil, fmt.Errorf("builder: %w", err)
	}
	dir := filepath.Join(a.cfg.DataDir, "builder")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("FLOCK_DATA_DIR: %w", err)
	}
	var archs []string
	if s := strings.TrimSpace(a.cfg.BuilderArchitectures); s != "" {
		for _, x := range strings.Split(s, ",") {
			x = strings.TrimSpace(x)
			if _, err := buildah.PlatformOf(x); err != nil {
				return nil, fmt.Errorf("FLOCK_BUILDER_ARCHITECTURES: %w", err)
			}
			archs = append(archs, x)
		}
	}
	var insecure []string
	for _, h := range strings.Split(a.cfg.BuilderInsecureRegistries, ",") {
		if h = strings.TrimSpace(h); h != "" {
			insecure = append(insecure, h)
		}
	}
	host := a.cfg.RegistryPublicHost()
	realm := RegistryRealm(a.cfg.PublicURL)
	fin := &builds.Finisher{Pool: a.pool, Blobs: a.blobs, Registry: a.registry, RegistryHost: host,
		FleetFinal: a.nudger.FleetChanged, Log: a.log}
	w := builder.New(builder.Config{Pool: a.pool, Bus: a.bus, Blobs: a.blobs, Registry: a.registry, Finisher: fin, Engine: engine,
		Credential: func(id uuid.UUID, ttl time.Duration) (string, error) {
			return registryproxy.SignBuildCredential(a.tokens, realm, host, id, ttl)
		},
		RegistryHost: host, PushHost: a.cfg.BuilderRegistry,
		Insecure: a.cfg.BuilderInsecure || strings.HasPrefix(a.cfg.PublicURL, "http://"), InsecureRegistries: insecure,
		DataDir: dir, Architectures: archs, Timeout: a.cfg.BuildTimeout, LogLimit: int64(a.cfg.BuildLogLimit),
		QueueTimeout: a.cfg.BuildQueueTimeout, Log: a.log, Registerer: a.metrics.Registry})
	a.log.Info("builder", "buildah", v, "holder", w.Holder())
	return &modules.Service{Run: w.Run}, nil
}
