// Package builds serves the builds API: uploading a project to build,
// reading builds and their logs (as text, or followed live), and
// cancelling. The builder target does the building (workers/builder).
package builds

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/gen/events"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/blob"
	"github.com/flock-io/flock-api/internal/builds"
	"github.com/flock-io/flock-api/internal/bus"
	"github.com/flock-io/flock-api/internal/registry"
)

// Builds implements the builds operations.
type Builds struct {
	Pool     *pgxpool.Pool
	Blobs    *blob.Store
	Registry *registry.Registry
	Bus      *bus.Bus
	// Finisher ends a cancelled build no builder is working on.
	Finisher *builds.Finisher
	// RegistryHost names images (the registry-proxy's public host).
	RegistryHost string
	// MaxUpload bounds an upload (FLOCK_BUILD_MAX_UPLOAD).
	MaxUpload int64
	// SpoolDir holds uploads while they are checked.
	SpoolDir string
	// BuilderAlive is how recently a builder must have been seen to count
	// as running.
	BuilderAlive time.Duration
	// Heartbeat is the idle time before a log stream sends a comment;
	// PollEvery how often it looks for new lines.
	Heartbeat time.Duration
	PollEvery time.Duration
	Log       *slog.Logger
}

const (
	defaultMaxUpload    = 512 << 20
	defaultBuilderAlive = 30 * time.Second
	defaultHeartbeat    = 15 * time.Second
	defaultPollEvery    = 250 * time.Millisecond
)

func (h *Builds) builderAlive() time.Duration {
	if h.BuilderAlive > 0 {
		return h.BuilderAlive
	}
	return defaultBuilderAlive
}

// Request is the record asking builders to run build b.
func Request(b db.Build) bus.Record {
	v, _ := json.Marshal(events.BuildRequestRecord{BuildId: b.ID.String(), OrgId: b.OrgID.String(),
		Architectures: b.Architectures, RequestedAt: time.Now().UTC().Format(time.RFC3339Nano)})
	return bus.Record{Topic: bus.TopicBuildRequests, Key: []byte(b.ID.String()), Value: v}
}

// view renders a build with its images; builders are the running ones, to
// say which queued images no builder can take.
func view(b db.Build, imgs []db.BuildImage, builders []db.Builder) (api.Build, error) {
	var services []builds.Service
	if err := json.Unmarshal(b.Services, &services); err != nil {
		return api.Build{}, fmt.Errorf("services of build %s: %w", b.ID, err)
	}
	indexes := map[string]string{}
	_ = json.Unmarshal(b.Indexes, &indexes)
	byService := map[string][]db.BuildImage{}
	for _, img := range imgs {
		byService[img.Service] = append(byService[img.Service], img)
	}
	out := api.Build{Id: b.ID, FleetId: b.FleetID, ReleaseId: b.ReleaseID, Status: api.BuildStatus(b.Status),
		Version: b.Version, CreatedAt: b.CreatedAt, StartedAt: b.StartedAt, FinishedAt: b.FinishedAt,
		CancelRequestedAt: b.CancelRequestedAt, LogLines: b.LogSeq, LogBytes: b.LogBytes, LogStoredBytes: b.LogStoredBytes,
		SourceBytes: &b.SourceBytes, Services: []api.BuildService{}}
	for _, a := range b.Architectures {
		out.Architectures = append(out.Architectures, api.Architecture(a))
	}
	if b.FinishedAt != nil {
		d := b.FinishedAt.Sub(b.CreatedAt).Milliseconds()
		out.DurationMs = &d
	}
	if len(b.Error) > 0 {
		var e api.BuildError
		if err := json.Unmarshal(b.Error, &e); err == nil {
			out.Error = &e
		}
	}
	for _, s := range services {
		bs := api.BuildService{Name: s.Release.Name, Images: []api.BuildImage{}}
		if s.Build == nil {
			if img := anyImage(s.Release); img != nil {
				ref := img.Image + "@" + img.Digest
				bs.Image = &ref
			}
		}
		if d, ok := indexes[s.Release.Name]; ok {
			bs.IndexDigest = &d
		}
		for _, img := range byService[s.Release.Name] {
			bs.Images = append(bs.Images, imageView(b, img, builders))
		}
		out.Services = append(out.Services, bs)
	}
	return out, nil
}

func imageView(b db.Build, img db.BuildImage, builders []db.Builder) api.BuildImage {
	v := api.BuildImage{Architecture: api.Architecture(img.Architecture), Status: api.BuildStatus(img.Status),
		Image: img.Image, Digest: img.Digest, Builder: img.Holder, QueuedAt: &img.QueuedAt,
		StartedAt: img.StartedAt, FinishedAt: img.FinishedAt}
	if img.StartedAt != nil && img.FinishedAt != nil {
		d := img.FinishedAt.Sub(*img.StartedAt).Milliseconds()
		v.DurationMs = &d
	}
	if len(img.Error) > 0 {
		var e api.BuildError
		if err := json.Unmarshal(img.Error, &e); err == nil {
			v.Error = &e
		}
	}
	if img.Status == builds.StatusQueued && b.FinishedAt == nil && !builds.CanAnyBuild(builders, img) {
		w := builds.NoBuilder(img)
		v.Waiting = &w
	}
	return v
}

func anyImage(s api.ReleaseService) *api.ServiceImage {
	for _, img := range []*api.ServiceImage{s.Images.Amd64, s.Images.Arm64, s.Images.Armv7, s.Images.Armv6, s.Images.I386, s.Images.Riscv64} {
		if img != nil {
			return img
		}
	}
	return nil
}

// load reads a build with its images and the running builders, ending it
// first when it was cancelled and no builder works on it any more.
func (h *Builds) load(ctx context.Context, q *db.Queries, id uuid.UUID) (db.Build, []db.BuildImage, []db.Builder, error) {
	b, err := q.BuildGet(ctx, id)
	if err != nil {
		return db.Build{}, nil, nil, fmt.Errorf("load build %s: %w", id, err)
	}
	imgs, err := q.BuildImages(ctx, id)
	if err != nil {
		return db.Build{}, nil, nil, fmt.Errorf("images of build %s: %w", id, err)
	}
	if b.FinishedAt == nil && b.CancelRequestedAt != nil && h.Finisher != nil && !anyRunning(imgs) {
		if _, err := h.Finisher.Finish(ctx, id); err != nil {
			return db.Build{}, nil, nil, err
		}
		return h.load(ctx, q, id)
	}
	live, err := q.BuildersLive(ctx, h.builderAlive().Seconds())
	if err != nil {
		return db.Build{}, nil, nil, fmt.Errorf("running builders: %w", err)
	}
	return b, imgs, live, nil
}

func anyRunning(imgs []db.BuildImage) bool {
	for _, i := range imgs {
		if i.Status == builds.StatusRunning {
			return true
		}
	}
	return false
}

func jsonMarshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return b, nil
}

func authAccess(ctx context.Context) string {
	if acc := auth.AccessFrom(ctx); acc != nil && acc.Principal != nil {
		return acc.Principal.Label()
	}
	return "someone"
}
