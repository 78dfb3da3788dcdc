package builder

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/buildah"
	"github.com/flock-io/flock-api/internal/builds"
	"github.com/flock-io/flock-api/internal/buildsrc"
	"github.com/flock-io/flock-api/internal/registryproxy"
)

// Why an image's build stopped before it ended by itself.
var (
	errCancelled = errors.New("build cancelled")
	errLeaseLost = errors.New("lease lost")
)

// failure is an image's failure as its BuildError says it.
type failure struct{ e api.BuildError }

func (f *failure) Error() string { return f.e.Code + ": " + f.e.Detail }

// build builds, pushes and records one claimed image.
func (w *Worker) build(parent context.Context, img db.BuildImage) {
	start := time.Now()
	log := w.log.With("build_id", img.BuildID, "service", img.Service, "architecture", img.Architecture)
	ctx, cancel := context.WithCancelCause(parent)
	defer cancel(nil)
	ctx, stopTimeout := context.WithTimeoutCause(ctx, w.cfg.Timeout, fmt.Errorf("timeout"))
	defer stopTimeout()

	lines := newLogBuffer(w, img)
	var bg sync.WaitGroup
	bg.Add(2)
	go func() { defer bg.Done(); lines.run(ctx) }()
	go func() { defer bg.Done(); w.renew(ctx, img, cancel) }()

	digest, mediaType, size, err := w.buildImage(ctx, img, lines)
	cause := context.Cause(ctx)
	cancel(nil)
	bg.Wait()
	lines.flush(context.WithoutCancel(parent))

	dbctx, dbcancel := context.WithTimeout(context.WithoutCancel(parent), 15*time.Second)
	defer dbcancel()
	q := db.New(w.cfg.Pool)
	finish := func(status string, e *api.BuildError) {
		p := db.BuildImageFinishParams{BuildID: img.BuildID, Service: img.Service, Architecture: img.Architecture,
			Holder: &w.cfg.Holder, Status: status}
		if status == builds.StatusSucceeded {
			image := w.cfg.RegistryHost + "/" + repoOf(img)
			p.Image, p.Digest, p.MediaType, p.ManifestSize = &image, &digest, &mediaType, &size
		}
		if e != nil {
			arch := api.Architecture(img.Architecture)
			e.Service, e.Architecture = &img.Service, &arch
			p.Error, _ = json.Marshal(e)
		}
		n, ferr := q.BuildImageFinish(dbctx, p)
		switch {
		case ferr != nil:
			log.ErrorContext(dbctx, "record image outcome", "status", status, "error", ferr.Error())
		case n == 0:
			w.outcomes.WithLabelValues("lost").Inc()
			return
		}
		w.outcomes.WithLabelValues(status).Inc()
		w.duration.Observe(time.Since(start).Seconds())
		msg := fmt.Sprintf("%s in %s", status, time.Since(start).Round(time.Millisecond))
		if status == builds.StatusSucceeded {
			msg = fmt.Sprintf("pushed %s@%s in %s", w.cfg.RegistryHost+"/"+repoOf(img), digest, time.Since(start).Round(time.Millisecond))
		} else if e != nil {
			msg += ": " + e.Detail
		}
		_ = builds.Append(dbctx, w.cfg.Pool, img.BuildID, w.cfg.LogLimit, []builds.Line{{TS: time.Now(),
			Service: img.Service, Arch: img.Architecture, Text: msg}})
		log.InfoContext(dbctx, "image built", "status", status, "seconds", time.Since(start).Seconds())
	}
	var fe *failure
	switch {
	case err == nil:
		finish(builds.StatusSucceeded, nil)
	case errors.Is(cause, errLeaseLost):
		w.outcomes.WithLabelValues("lost").Inc()
		log.WarnContext(dbctx, "image lease lost; another builder has it")
	case errors.Is(cause, errCancelled):
		finish(builds.StatusCancelled, &api.BuildError{Code: builds.CodeCancelled, Detail: "the build was cancelled"})
	case parent.Err() != nil:
		// Stopping: give it back for another replica.
		if _, err := q.BuildImageRelease(dbctx, db.BuildImageReleaseParams{BuildID: img.BuildID, Service: img.Service,
			Architecture: img.Architecture, Holder: &w.cfg.Holder}); err != nil {
			log.WarnContext(dbctx, "give image back", "error", err.Error())
		}
		w.outcomes.WithLabelValues("stopped").Inc()
	case cause != nil && cause.Error() == "timeout":
		finish(builds.StatusFailed, &api.BuildError{Code: builds.CodeTimeout,
			Detail: fmt.Sprintf("the image took longer than %s to build (FLOCK_BUILD_TIMEOUT)", w.cfg.Timeout)})
	case errors.As(err, &fe):
		finish(builds.StatusFailed, &fe.e)
	default:
		log.ErrorContext(dbctx, "build image", "error", err.Error())
		finish(builds.StatusFailed, &api.BuildError{Code: builds.CodeInternal, Detail: lines.mask(err.Error())})
	}
}

// renew keeps the lease while the image builds, and stops the build when
// it is cancelled or the lease is lost.
func (w *Worker) renew(ctx context.Context, img db.BuildImage, cancel context.CancelCauseFunc) {
	every := w.cfg.Lease / 3
	if every > 2*time.Second {
		// Cancellation is read from the same row: check often enough that
		// a cancelled build stops within seconds.
		every = 2 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cr, err := db.New(w.cfg.Pool).BuildImageRenew(ctx, db.BuildImageRenewParams{LeaseSeconds: w.cfg.Lease.Seconds(),
			BuildID: img.BuildID, Service: img.Service, Architecture: img.Architecture, Holder: &w.cfg.Holder})
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			cancel(errLeaseLost)
			return
		case err != nil:
			continue // a blip; the lease outlasts a few missed renewals
		case cr:
			cancel(errCancelled)
			return
		}
	}
}

func repoOf(img db.BuildImage) string {
	if img.Image != nil {
		if _, repo, ok := strings.Cut(*img.Image, "/"); ok {
			return repo
		}
	}
	return img.Service
}

// buildImage runs buildah for img and pushes the result; it returns the
// pushed manifest's digest, media type and size.
func (w *Worker) buildImage(ctx context.Context, img db.BuildImage, lines *logBuffer) (string, string, int64, error) {
	q := db.New(w.cfg.Pool)
	b, err := q.BuildGet(ctx, img.BuildID)
	if err != nil {
		return "", "", 0, fmt.Errorf("load build %s: %w", img.BuildID, err)
	}
	if err := q.BuildStarted(ctx, b.ID); err != nil {
		return "", "", 0, fmt.Errorf("start build %s: %w", b.ID, err)
	}
	var services []builds.Service
	if err := json.Unmarshal(b.Services, &services); err != nil {
		return "", "", 0, fmt.Errorf("services of build %s: %w", b.ID, err)
	}
	var spec *builds.Build
	for _, s := range services {
		if s.Release.Name == img.Service {
			spec = s.Build
		}
	}
	if spec == nil {
		return "", "", 0, &failure{api.BuildError{Code: builds.CodeInternal, Detail: "the build names no such service to build"}}
	}
	lines.add(builds.PlatformService, fmt.Sprintf("building %s for %s on %s (attempt %d)", img.Service, img.Architecture, w.cfg.Holder, img.Attempts))

	work := filepath.Join(w.cfg.DataDir, "work", fmt.Sprintf("%s-%s-%s-%d", b.ID, img.Service, img.Architecture, img.Attempts))
	if err := os.MkdirAll(work, 0o700); err != nil {
		return "", "", 0, fmt.Errorf("work dir: %w", err)
	}
	defer os.RemoveAll(work)
	src := filepath.Join(work, "src")
	if err := w.fetchSource(ctx, b, filepath.Join(work, "source.tar"), src); err != nil {
		return "", "", 0, err
	}
	secrets, userAuth, err := takeSecrets(src)
	if err != nil {
		return "", "", 0, &failure{api.BuildError{Code: builds.CodeSourceInvalid, Detail: err.Error()}}
	}
	cred, err := w.cfg.Credential(b.ID, w.cfg.Timeout+w.cfg.Lease)
	if err != nil {
		return "", "", 0, fmt.Errorf("build credential: %w", err)
	}
	authJSON, masked, err := authFile(userAuth, w.cfg.PushHost, cred)
	if err != nil {
		return "", "", 0, &failure{api.BuildError{Code: builds.CodeSourceInvalid, Detail: ".flock/registry-auth.json: " + err.Error()}}
	}
	for _, v := range secrets {
		masked = append(masked, v)
	}
	lines.setMask(builds.NewMasker(masked...))

	storage := buildah.Storage{Root: filepath.Join(w.cfg.DataDir, "storage", b.FleetID.String(), "root"),
		RunRoot: filepath.Join(w.cfg.DataDir, "storage", b.FleetID.String(), "run")}
	insecure := append([]string(nil), w.cfg.InsecureRegistries...)
	if w.cfg.Insecure {
		insecure = append(insecure, w.cfg.PushHost)
		if w.cfg.RegistryHost != w.cfg.PushHost {
			insecure = append(insecure, w.cfg.RegistryHost)
		}
	}
	out := func(l string) { lines.add(img.Service, l) }
	ctxDir := filepath.Join(src, filepath.FromSlash(spec.Context))
	// Unnamed, and left in the storage after the push: removing it would
	// take its intermediate images, which are the fleet's layer cache.
	res, err := w.cfg.Engine.Build(ctx, buildah.BuildOptions{Storage: storage, WorkDir: filepath.Join(work, "buildah"),
		Context: ctxDir, Dockerfile: filepath.Join(ctxDir, filepath.FromSlash(spec.Dockerfile)), Platform: img.Architecture,
		Target: spec.Target, Args: spec.Args, Secrets: secrets, Auth: authJSON, Insecure: insecure,
		// No labels of our own: buildah adds each as a step that commits a
		// layer (about 0.1 s an image here); the build is named by the tag
		// the image is pushed under.
		Layers: true, Output: out})
	if err != nil {
		if ctx.Err() != nil {
			return "", "", 0, ctx.Err()
		}
		var be *buildah.BuildError
		if errors.As(err, &be) {
			tail := make([]string, len(be.Tail))
			for i, l := range be.Tail {
				tail[i] = lines.mask(l)
			}
			detail := lines.mask(be.Message)
			if detail == "" {
				detail = fmt.Sprintf("buildah exited with %d", be.ExitCode)
			}
			step := lines.mask(be.Step)
			return "", "", 0, &failure{api.BuildError{Code: builds.CodeBuildFailed, Detail: detail, Step: &step, LogTail: &tail}}
		}
		return "", "", 0, err
	}
	repo := repoOf(img)
	dest := "docker://" + w.cfg.PushHost + "/" + repo + ":" + builds.Tag(b.ID) + "-" + img.Architecture
	lines.add(builds.PlatformService, "pushing "+img.Service+" for "+img.Architecture)
	digest, err := w.cfg.Engine.Push(ctx, buildah.PushOptions{Storage: storage, WorkDir: filepath.Join(work, "buildah"),
		Image: res.ImageID, Dest: dest, Auth: authJSON, Insecure: insecure, Output: out})
	if err != nil {
		if ctx.Err() != nil {
			return "", "", 0, ctx.Err()
		}
		return "", "", 0, &failure{api.BuildError{Code: builds.CodePushFailed, Detail: lines.mask(err.Error())}}
	}
	raw, mt, _, err := w.cfg.Registry.Manifest(ctx, repo, digest)
	if err != nil {
		return "", "", 0, &failure{api.BuildError{Code: builds.CodePushFailed, Detail: "the pushed manifest cannot be read back: " + err.Error()}}
	}
	return digest, string(mt), int64(len(raw)), nil
}

// fetchSource copies the build's upload from the blob store and unpacks
// it, checked again entry by entry (the store is not trusted more than the
// client was).
func (w *Worker) fetchSource(ctx context.Context, b db.Build, tarPath, dest string) error {
	rc, _, err := w.cfg.Blobs.Get(ctx, b.SourceKey)
	if err != nil {
		return fmt.Errorf("read the source of build %s: %w", b.ID, err)
	}
	defer rc.Close()
	f, err := os.OpenFile(tarPath, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("spool source: %w", err)
	}
	_, err = io.Copy(f, rc)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("spool source: %w", err)
	}
	if err := os.MkdirAll(dest, 0o700); err != nil {
		return fmt.Errorf("source dir: %w", err)
	}
	if err := buildsrc.Extract(ctx, tarPath, dest); err != nil {
		var se *buildsrc.Error
		if errors.As(err, &se) {
			return &failure{api.BuildError{Code: builds.CodeSourceInvalid, Detail: se.Detail}}
		}
		return fmt.Errorf("unpack source: %w", err)
	}
	return os.Remove(tarPath)
}

// takeSecrets reads the project's build secrets (.flock/secrets/<id>) and
// registry auth file (.flock/registry-auth.json), then removes .flock so
// no build context can copy them into a layer.
func takeSecrets(src string) (map[string]string, []byte, error) {
	dir := filepath.Join(src, ".flock")
	defer os.RemoveAll(dir)
	secrets := map[string]string{}
	entries, err := os.ReadDir(filepath.Join(dir, "secrets"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf(".flock/secrets: %w", err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			return nil, nil, fmt.Errorf(".flock/secrets/%s is not a file", e.Name())
		}
		v, err := os.ReadFile(filepath.Join(dir, "secrets", e.Name()))
		if err != nil {
			return nil, nil, fmt.Errorf(".flock/secrets/%s: %w", e.Name(), err)
		}
		secrets[e.Name()] = string(v)
	}
	auth, err := os.ReadFile(filepath.Join(dir, "registry-auth.json"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf(".flock/registry-auth.json: %w", err)
	}
	return secrets, auth, nil
}

// authFile merges the project's registry logins with the build's own for
// the platform registry, and returns the values to mask in the log.
func authFile(user []byte, host, cred string) ([]byte, []string, error) {
	doc := struct {
		Auths map[string]map[string]string `json:"auths"`
	}{Auths: map[string]map[string]string{}}
	if len(user) > 0 {
		if err := json.Unmarshal(user, &doc); err != nil {
			return nil, nil, fmt.Errorf("not a containers auth file: %w", err)
		}
		if doc.Auths == nil {
			doc.Auths = map[string]map[string]string{}
		}
	}
	var masked []string
	for _, a := range doc.Auths {
		if v := a["auth"]; v != "" {
			masked = append(masked, v)
			if raw, err := base64.StdEncoding.DecodeString(v); err == nil {
				if _, pw, ok := strings.Cut(string(raw), ":"); ok {
					masked = append(masked, pw)
				}
			}
		}
		if v := a["password"]; v != "" {
			masked = append(masked, v)
		}
	}
	basic := base64.StdEncoding.EncodeToString([]byte(registryproxy.BuildUser + ":" + cred))
	doc.Auths[host] = map[string]string{"auth": basic}
	masked = append(masked, cred, basic)
	b, err := json.Marshal(doc)
	return b, masked, err
}
