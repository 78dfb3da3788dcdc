package app

// The image side: the platform registry (Harbor, or the embedded one), the
// blob store (S3, or the embedded one), the registry-proxy target that
// engines pull and push through, and the delta target.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/flock-io/flock-api/internal/blob"
	"github.com/flock-io/flock-api/internal/modules"
	"github.com/flock-io/flock-api/internal/registry"
	"github.com/flock-io/flock-api/internal/registryproxy"
	"github.com/flock-io/flock-api/workers/delta"
)

func (a *App) initRegistry(ctx context.Context) (*modules.Service, error) {
	cfg := registry.Config{URL: a.cfg.RegistryURL, Username: a.cfg.RegistryUsername, Password: a.cfg.RegistryPassword,
		DataDir: filepath.Join(a.cfg.DataDir, "registry"), Log: a.log}
	r, err := registry.Open(ctx, cfg)
	if err != nil {
		if a.cfg.RegistryURL == "" {
			return nil, fmt.Errorf("FLOCK_DATA_DIR: embedded registry: %w", err)
		}
		return nil, fmt.Errorf("FLOCK_REGISTRY_URL: %w", err)
	}
	if r.Embedded() {
		a.log.Info("store engine", "concern", "OCI images", "engine", "embedded-registry", "mode", "embedded", "dir", cfg.DataDir)
		a.embeddedWarning("OCI images", "FLOCK_REGISTRY_URL")
	} else {
		a.log.Info("store engine", "concern", "OCI images", "engine", "registry", "mode", "external", "url", r.Base().String())
	}
	a.registry = r
	return &modules.Service{Close: func() { _ = r.Close() }}, nil
}

func (a *App) initBlob(ctx context.Context) (*modules.Service, error) {
	cfg := blob.Config{Endpoint: a.cfg.S3Endpoint, Bucket: a.cfg.S3Bucket, Region: a.cfg.S3Region,
		AccessKey: a.cfg.S3AccessKey, SecretKey: a.cfg.S3SecretKey, DataDir: filepath.Join(a.cfg.DataDir, "s3"), Log: a.log}
	s, err := blob.Open(ctx, cfg)
	if err != nil {
		if a.cfg.S3Endpoint == "" {
			return nil, fmt.Errorf("FLOCK_DATA_DIR: embedded S3 store: %w", err)
		}
		return nil, fmt.Errorf("FLOCK_S3_ENDPOINT: %w", err)
	}
	if s.Embedded() {
		a.log.Info("store engine", "concern", "blobs", "engine", "gofakes3", "mode", "embedded", "dir", cfg.DataDir, "bucket", s.Bucket())
		a.embeddedWarning("blobs", "FLOCK_S3_ENDPOINT")
	} else {
		a.log.Info("store engine", "concern", "blobs", "engine", "s3", "mode", "external", "endpoint", s.Endpoint(), "bucket", s.Bucket())
	}
	a.blobs = s
	return &modules.Service{Close: s.Close}, nil
}

// initRegistryProxy mounts the distribution API (/v2/) and its token
// endpoint in front of the registry.
func (a *App) initRegistryProxy(context.Context) (*modules.Service, error) {
	p, err := registryproxy.New(registryproxy.Config{Registry: a.registry, Pool: a.pool, Authn: a.authn, Tokens: a.tokens,
		Realm: RegistryRealm(a.cfg.PublicURL), Service: a.cfg.RegistryPublicHost(),
		CacheDir: a.cfg.RegistryCacheDir, CacheSize: int64(a.cfg.RegistryCacheSize), Log: a.log, Registerer: a.metrics.Registry})
	if err != nil {
		return nil, err
	}
	p.Mount(a.server.Router())
	// Layers are as large as they are; the proxy caps manifests itself.
	a.server.UnlimitedBodies("/v2/")
	return nil, nil
}

// RegistryRealm is the registry's token endpoint, where engines trade
// their login for a token.
func RegistryRealm(publicURL string) string {
	return strings.TrimRight(publicURL, "/") + "/registry/token"
}

// initDelta runs the delta worker: it takes delta requests from Kafka and
// computes each once, whatever the number of replicas.
func (a *App) initDelta(context.Context) (*modules.Service, error) {
	tmp := filepath.Join(a.cfg.DataDir, "delta-tmp")
	if err := os.MkdirAll(tmp, 0o750); err != nil {
		return nil, fmt.Errorf("FLOCK_DATA_DIR: %w", err)
	}
	w := delta.New(delta.Config{Pool: a.pool, Bus: a.bus, Registry: a.registry, Blobs: a.blobs,
		MaxRatio: a.cfg.DeltaMaxRatio, TmpDir: tmp, Log: a.log, Registerer: a.metrics.Registry})
	return &modules.Service{Run: w.Run}, nil
}
