package builds

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/flock-io/flock-api/internal/eventdelivery"
	"log/slog"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/blob"
	"github.com/flock-io/flock-api/internal/registry"
)

// Finisher ends builds whose images have all settled.
type Finisher struct {
	Pool     *pgxpool.Pool
	Blobs    *blob.Store
	Registry *registry.Registry
	// RegistryHost names images in releases (the registry-proxy's public
	// host).
	RegistryHost string
	// FleetFinal, when set, is told about a fleet whose build made a
	// release final, after the commit (its devices may have a new target).
	FleetFinal func(fleet uuid.UUID)
	Log        *slog.Logger
}

// Finish ends build id if every image settled (or the build was cancelled
// and none is running): it pushes each built service's image index, stores
// the log in the blob store, records the outcome and turns the release final
// or failed, all or nothing. It reports whether the build has ended (now or
// before). Any number of callers may race: the build row's lock lets one
// end it.
func (f *Finisher) Finish(ctx context.Context, id uuid.UUID) (bool, error) {
	var (
		ended     bool
		final     bool
		fleet     uuid.UUID
		sourceKey string
	)
	err := pgx.BeginFunc(ctx, f.Pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		b, err := q.BuildForUpdate(ctx, id)
		if err != nil {
			return fmt.Errorf("lock build %s: %w", id, err)
		}
		if b.FinishedAt != nil {
			ended = true
			return nil
		}
		cancelled := b.CancelRequestedAt != nil
		if cancelled {
			if _, err := q.BuildImagesCancelQueued(ctx, id); err != nil {
				return fmt.Errorf("cancel queued images of build %s: %w", id, err)
			}
		}
		imgs, err := q.BuildImages(ctx, id)
		if err != nil {
			return fmt.Errorf("images of build %s: %w", id, err)
		}
		status := StatusSucceeded
		var firstErr *api.BuildError
		for _, img := range imgs {
			switch img.Status {
			case StatusQueued, StatusRunning:
				return nil // not yet
			case StatusFailed:
				status = StatusFailed
				if firstErr == nil {
					firstErr = imageError(img)
				}
			case StatusCancelled:
				if status == StatusSucceeded {
					status = StatusCancelled
				}
			}
		}
		if cancelled && status == StatusSucceeded && len(imgs) > 0 && !allSucceeded(imgs) {
			status = StatusCancelled
		}
		var services []Service
		if err := json.Unmarshal(b.Services, &services); err != nil {
			return fmt.Errorf("services of build %s: %w", id, err)
		}
		indexes := map[string]string{}
		if status == StatusSucceeded {
			idx, rs, err := f.publish(ctx, q, b, services, imgs)
			if err != nil {
				status = StatusFailed
				firstErr = &api.BuildError{Code: CodePushFailed, Detail: err.Error()}
			} else {
				indexes = idx
				services = rs
			}
		}
		if status == StatusCancelled && firstErr == nil {
			firstErr = &api.BuildError{Code: CodeCancelled, Detail: "the build was cancelled"}
		}
		summary := fmt.Sprintf("build %s in %s", status, time.Since(b.CreatedAt).Round(time.Millisecond))
		if firstErr != nil {
			summary += ": " + firstErr.Detail
		}
		if err := AppendTx(ctx, q, id, 0, []Line{{TS: time.Now(), Service: PlatformService, Text: summary}}); err != nil {
			return err
		}
		key, stored, err := f.storeLog(ctx, q, id)
		if err != nil {
			return err
		}
		var errJSON []byte
		if firstErr != nil {
			errJSON, _ = json.Marshal(firstErr)
		}
		idxJSON, _ := json.Marshal(indexes)
		if _, err := q.BuildFinish(ctx, db.BuildFinishParams{ID: id, Status: status, Error: errJSON, Indexes: idxJSON,
			LogKey: &key, LogStoredBytes: &stored}); err != nil {
			return fmt.Errorf("end build %s: %w", id, err)
		}
		detail := ""
		if firstErr != nil {
			detail = firstErr.Detail
		}
		if _, _, err := eventdelivery.Emit(ctx, q, eventdelivery.BuildFinished(id, b.OrgID, b.FleetID, b.ReleaseID, status, detail, time.Now())); err != nil {
			return fmt.Errorf("end build %s: %w", id, err)
		}
		releaseStatus := "failed"
		if status == StatusSucceeded {
			releaseStatus = "final"
		}
		rel := make([]api.ReleaseService, len(services))
		for i, s := range services {
			rel[i] = s.Release
		}
		relJSON, err := json.Marshal(rel)
		if err != nil {
			return fmt.Errorf("encode release services: %w", err)
		}
		r, err := q.ReleaseBuilt(ctx, db.ReleaseBuiltParams{ID: b.ReleaseID, Status: releaseStatus, Services: relJSON})
		switch {
		case errors.Is(err, pgx.ErrNoRows): // no longer a draft: left alone
		case err != nil:
			return fmt.Errorf("end release %s of build %s: %w", b.ReleaseID, id, err)
		default:
			if err := eventdelivery.EmitRelease(ctx, q, r, uuid.NullUUID{UUID: id, Valid: true}, eventdelivery.ReleaseStatusChange(r.Status)); err != nil {
				return fmt.Errorf("end release %s of build %s: %w", b.ReleaseID, id, err)
			}
		}
		if releaseStatus == "final" {
			// Serialises with pin changes, as a release made final by the
			// API does (see handlers/releases.becameFinal).
			fl, err := q.FleetForUpdate(ctx, b.FleetID)
			if err != nil {
				return fmt.Errorf("lock fleet %s: %w", b.FleetID, err)
			}
			final = !fl.PinnedReleaseID.Valid
		}
		if err := q.BuildLogDelete(ctx, id); err != nil {
			return fmt.Errorf("drop the log lines of build %s: %w", id, err)
		}
		ended, fleet, sourceKey = true, b.FleetID, b.SourceKey
		return nil
	})
	if err != nil {
		return false, err
	}
	if sourceKey != "" {
		// The source may hold build secrets: it goes as soon as the build
		// ends. A failed delete leaves it for the operator's bucket
		// lifecycle rule; the build has ended all the same.
		if err := f.Blobs.Delete(ctx, sourceKey); err != nil && f.Log != nil {
			f.Log.WarnContext(ctx, "build: delete source", "build_id", id, "key", sourceKey, "error", err.Error())
		}
	}
	if final && f.FleetFinal != nil {
		f.FleetFinal(fleet)
	}
	return ended, nil
}

func allSucceeded(imgs []db.BuildImage) bool {
	for _, i := range imgs {
		if i.Status != StatusSucceeded {
			return false
		}
	}
	return true
}

func imageError(img db.BuildImage) *api.BuildError {
	var e api.BuildError
	if len(img.Error) > 0 && json.Unmarshal(img.Error, &e) == nil && e.Code != "" {
		return &e
	}
	return &api.BuildError{Code: CodeInternal, Detail: fmt.Sprintf("%s for %s failed", img.Service, img.Architecture)}
}

// publish pushes an image index per built service and returns the
// indexes' digests and the services with their images filled in.
func (f *Finisher) publish(ctx context.Context, q *db.Queries, b db.Build, services []Service, imgs []db.BuildImage) (map[string]string, []Service, error) {
	org, err := q.OrgByID(ctx, b.OrgID)
	if err != nil {
		return nil, nil, fmt.Errorf("load org %s: %w", b.OrgID, err)
	}
	fl, err := q.FleetGet(ctx, b.FleetID)
	if err != nil {
		return nil, nil, fmt.Errorf("load fleet %s: %w", b.FleetID, err)
	}
	byService := map[string][]db.BuildImage{}
	for _, img := range imgs {
		byService[img.Service] = append(byService[img.Service], img)
	}
	indexes := map[string]string{}
	out := make([]Service, len(services))
	for i, s := range services {
		out[i] = s
		if s.Build == nil {
			continue
		}
		repo := Repository(org.Slug, fl.Slug, s.Release.Name)
		var entries []registry.IndexEntry
		images := map[string]api.ServiceImage{}
		for _, img := range byService[s.Release.Name] {
			if img.Digest == nil || img.MediaType == nil || img.ManifestSize == nil {
				return nil, nil, fmt.Errorf("%s for %s has no pushed manifest", img.Service, img.Architecture)
			}
			h, err := v1.NewHash(*img.Digest)
			if err != nil {
				return nil, nil, fmt.Errorf("%s for %s: digest %q: %w", img.Service, img.Architecture, *img.Digest, err)
			}
			entries = append(entries, registry.IndexEntry{Architecture: img.Architecture, Digest: h,
				MediaType: types.MediaType(*img.MediaType), Size: *img.ManifestSize})
			images[img.Architecture] = api.ServiceImage{Image: f.RegistryHost + "/" + repo, Digest: *img.Digest}
		}
		d, err := f.Registry.PushIndex(ctx, repo, Tag(b.ID), entries)
		if err != nil {
			return nil, nil, fmt.Errorf("push the image index of %s: %w", s.Release.Name, err)
		}
		indexes[s.Release.Name] = d.String()
		SetImages(&out[i].Release, images)
	}
	return indexes, out, nil
}

// storeLog writes the build's whole log, compressed, to the blob store and
// returns its key and stored size.
func (f *Finisher) storeLog(ctx context.Context, q *db.Queries, id uuid.UUID) (string, int64, error) {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	err := Lines(ctx, q, nil, db.Build{ID: id}, 0, func(l Line) error {
		_, err := zw.Write([]byte(Format(l)))
		return err
	})
	if err != nil {
		return "", 0, err
	}
	if err := zw.Close(); err != nil {
		return "", 0, fmt.Errorf("compress the log of build %s: %w", id, err)
	}
	key := LogKey(id.String())
	n := int64(buf.Len())
	if err := f.Blobs.Put(ctx, key, &buf, n); err != nil {
		return "", 0, fmt.Errorf("store the log of build %s: %w", id, err)
	}
	return key, n, nil
}

// Repository is a service's repository in the platform registry.
func Repository(orgSlug, fleetSlug, service string) string {
	return orgSlug + "/" + fleetSlug + "/" + service
}

// Tag is the tag a build's images and indexes are pushed under.
func Tag(build uuid.UUID) string { return "build-" + build.String() }

// SetImages sets a release service's image for each architecture of m.
func SetImages(rs *api.ReleaseService, m map[string]api.ServiceImage) {
	for a, img := range m {
		img := img
		switch a {
		case "amd64":
			rs.Images.Amd64 = &img
		case "arm64":
			rs.Images.Arm64 = &img
		case "armv6":
			rs.Images.Armv6 = &img
		case "armv7":
			rs.Images.Armv7 = &img
		case "i386":
			rs.Images.I386 = &img
		case "riscv64":
			rs.Images.Riscv64 = &img
		}
	}
}
