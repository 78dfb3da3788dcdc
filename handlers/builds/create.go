package builds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/builds"
	"github.com/flock-io/flock-api/internal/buildsrc"
	"github.com/flock-io/flock-api/internal/eventdelivery"
	"github.com/flock-io/flock-api/internal/http/idempotency"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/postgres"
	"github.com/flock-io/flock-api/internal/registry"
)

// uploadPath is the route of build:create.
var uploadPath = regexp.MustCompile(`^/v1/fleets/[^/]+/builds/?$`)

// IsUpload reports whether r uploads a build (the server exempts it from
// the general body limit: Spool applies the upload limit).
func IsUpload(r *http.Request) bool {
	return r.Method == http.MethodPost && uploadPath.MatchString(r.URL.Path)
}

// spooled is an upload written to disk before the operation runs.
type spooled struct {
	*os.File
	size int64
}

// Spool writes an authenticated build upload to a file before the
// operation runs, so its transaction is not held open while the client
// sends the body, and the checks can read it more than once. A body over
// MaxUpload is 413 without being stored whole.
func (h *Builds) Spool(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !IsUpload(r) || auth.PrincipalFrom(r.Context()) == nil {
			next.ServeHTTP(w, r)
			return
		}
		// Before anything reads the body: the idempotency middleware would
		// read all of it into memory.
		if r.Header.Get(idempotency.Header) != "" {
			problem.Write(w, r, problem.Invalid("header", idempotency.Header,
				"build:create does not take an Idempotency-Key: each upload is a build of its own"))
			return
		}
		if !h.mayUpload(r) {
			// The guard answers (403 or 404) without reading the body.
			next.ServeHTTP(w, r)
			return
		}
		limit := h.maxUpload()
		if r.ContentLength > limit {
			problem.Write(w, r, tooLarge(limit))
			return
		}
		sp, err := h.spool(r.Body, limit)
		if err != nil {
			problem.Write(w, r, err)
			return
		}
		defer func() {
			sp.Close()
			os.Remove(sp.Name())
		}()
		r.Body = sp
		next.ServeHTTP(w, r)
	})
}

// mayUpload reports whether the caller may create builds in the fleet of
// the path (developer or more in its organisation), so that nobody else
// makes the server store a body it then refuses. The guard decides again.
func (h *Builds) mayUpload(r *http.Request) bool {
	p := auth.PrincipalFrom(r.Context())
	if p == nil {
		return false
	}
	id, err := uuid.Parse(strings.Split(strings.TrimPrefix(r.URL.Path, "/v1/fleets/"), "/")[0])
	if err != nil {
		return false
	}
	var user uuid.UUID
	if p.Kind == auth.KindUser {
		user = p.UserID
	}
	fa, err := db.New(h.Pool).FleetAccess(r.Context(), db.FleetAccessParams{ID: id, UserID: user})
	if err != nil {
		return false
	}
	switch {
	case p.Kind == auth.KindAPIKey:
		return p.KeyOrg == fa.OrgID && auth.AtLeast(p.KeyRole, db.OrgRoleDeveloper)
	case p.Kind == auth.KindUser:
		return fa.Role != nil && auth.AtLeast(*fa.Role, db.OrgRoleDeveloper)
	}
	return false
}

func (h *Builds) maxUpload() int64 {
	if h.MaxUpload > 0 {
		return h.MaxUpload
	}
	return defaultMaxUpload
}

func tooLarge(limit int64) *problem.Error {
	return problem.Errorf(http.StatusRequestEntityTooLarge, "build_too_large",
		"the upload is larger than this deployment's limit of %d bytes (FLOCK_BUILD_MAX_UPLOAD)", limit)
}

func (h *Builds) spool(body io.Reader, limit int64) (*spooled, error) {
	f, err := os.CreateTemp(h.SpoolDir, "upload-*.tar")
	if err != nil {
		return nil, fmt.Errorf("spool upload: %w", err)
	}
	n, err := io.Copy(f, io.LimitReader(body, limit+1))
	if err == nil && n > limit {
		err = tooLarge(limit)
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		var pe *problem.Error
		if errors.As(err, &pe) {
			return nil, pe
		}
		return nil, problem.Errorf(http.StatusBadRequest, "upload_incomplete", "the upload could not be read to its end: %v", err)
	}
	return &spooled{File: f, size: n}, nil
}

// BuildCreate checks an uploaded project, stores it and queues its build
// with a draft release.
func (h *Builds) BuildCreate(ctx context.Context, req api.BuildCreateRequestObject) (api.BuildCreateResponseObject, error) {
	acc := auth.AccessFrom(ctx)
	sp, ok := req.Body.(*spooled)
	if !ok {
		// Not through Spool (a direct call): spool here.
		var err error
		if sp, err = h.spool(req.Body, h.maxUpload()); err != nil {
			return nil, err
		}
		defer func() {
			sp.Close()
			os.Remove(sp.Name())
		}()
	}
	if sp.size == 0 {
		return nil, problem.Errorf(http.StatusBadRequest, buildsrc.CodeSourceInvalid, "the body is empty: send the project as a tar")
	}
	q := postgres.Queries(ctx, h.Pool)
	fleet, err := q.FleetGet(ctx, req.FleetId)
	if err != nil {
		return nil, fmt.Errorf("load fleet %s: %w", req.FleetId, err)
	}
	org, err := q.OrgByID(ctx, acc.OrgID)
	if err != nil {
		return nil, fmt.Errorf("load org %s: %w", acc.OrgID, err)
	}
	archs := []string{fleet.Architecture}
	if req.Params.Architectures != nil {
		for _, a := range *req.Params.Architectures {
			if !slices.Contains(archs, string(a)) {
				archs = append(archs, string(a))
			}
		}
	}
	proj, err := buildsrc.Scan(ctx, sp.Name(), buildsrc.Options{})
	if err != nil {
		var se *buildsrc.Error
		if errors.As(err, &se) {
			pe := &problem.Error{Status: http.StatusBadRequest, Code: se.Code, Detail: se.Detail}
			for _, f := range se.Fields {
				pe.Errors = append(pe.Errors, problem.FieldError{In: "body", Field: f.Field, Detail: f.Detail})
			}
			return nil, pe
		}
		return nil, fmt.Errorf("read upload: %w", err)
	}
	id := uuid.New()
	services := make([]builds.Service, 0, len(proj.Services))
	releaseServices := make([]api.ReleaseService, 0, len(proj.Services))
	nBuilt := 0
	for _, s := range proj.Services {
		bs := builds.Service{Release: releaseService(s)}
		if s.Build != nil {
			nBuilt++
			bs.Build = &builds.Build{Context: s.Build.Context, Dockerfile: s.Build.Dockerfile, Args: s.Build.Args,
				Target: s.Build.Target, NeedsRun: s.Build.NeedsRun}
		} else {
			imgs, err := h.resolveImage(ctx, org.Slug, s.Name, s.Image, archs)
			if err != nil {
				return nil, err
			}
			builds.SetImages(&bs.Release, imgs)
		}
		services = append(services, bs)
		releaseServices = append(releaseServices, bs.Release)
	}
	if nBuilt == 0 {
		return nil, problem.Errorf(http.StatusBadRequest, "nothing_to_build",
			"no service of the project has `build`: register a release from its images instead (POST /v1/fleets/{fleetId}/releases)")
	}
	key := builds.SourceKey(id.String())
	if err := h.Blobs.Put(ctx, key, sp.File, sp.size); err != nil {
		return nil, fmt.Errorf("store the source of build %s: %w", id, err)
	}
	version := ""
	if req.Params.Version != nil {
		version = *req.Params.Version
	}
	relJSON, err := jsonMarshal(releaseServices)
	if err != nil {
		return nil, err
	}
	rel, err := q.ReleaseCreate(ctx, db.ReleaseCreateParams{OrgID: acc.OrgID, FleetID: fleet.ID, Version: version,
		Status: "draft", Services: relJSON, Tags: map[string]string{"flock.build": id.String()}})
	if err != nil {
		return nil, fmt.Errorf("create the release of build %s: %w", id, err)
	}
	if err := eventdelivery.EmitRelease(ctx, q, rel, uuid.NullUUID{UUID: id, Valid: true}, "created"); err != nil {
		return nil, err
	}
	svcJSON, err := jsonMarshal(services)
	if err != nil {
		return nil, err
	}
	b, err := q.BuildCreate(ctx, db.BuildCreateParams{ID: id, OrgID: acc.OrgID, FleetID: fleet.ID, ReleaseID: rel.ID,
		Version: version, Architectures: archs, Services: svcJSON, SourceKey: key, SourceBytes: sp.size,
		CreatedBy: acc.Principal.Label()})
	if err != nil {
		return nil, fmt.Errorf("create build %s: %w", id, err)
	}
	repoHost := h.RegistryHost + "/" + org.Slug + "/" + fleet.Slug + "/"
	for _, s := range services {
		if s.Build == nil {
			continue
		}
		img := repoHost + s.Release.Name
		for _, a := range archs {
			if err := q.BuildImageCreate(ctx, db.BuildImageCreateParams{BuildID: id, Service: s.Release.Name,
				Architecture: a, NeedsRun: s.Build.NeedsRun, Image: &img}); err != nil {
				return nil, fmt.Errorf("queue %s for %s: %w", s.Release.Name, a, err)
			}
		}
	}
	if err := builds.AppendTx(ctx, q, id, 0, []builds.Line{{TS: time.Now(), Service: builds.PlatformService,
		Text: fmt.Sprintf("build queued: %d services (%d to build) for %s, %d bytes of source, by %s",
			len(services), nBuilt, strings.Join(archs, ", "), sp.size, acc.Principal.Label())}}); err != nil {
		return nil, err
	}
	acc.SetTarget(id.String())
	postgres.AfterCommit(ctx, func() { h.publish(b) })
	imgs, err := q.BuildImages(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("images of build %s: %w", id, err)
	}
	live, err := q.BuildersLive(ctx, h.builderAlive().Seconds())
	if err != nil {
		return nil, fmt.Errorf("running builders: %w", err)
	}
	if b, err = q.BuildGet(ctx, id); err != nil { // with its first log line counted
		return nil, fmt.Errorf("load build %s: %w", id, err)
	}
	out, err := view(b, imgs, live)
	if err != nil {
		return nil, err
	}
	loc := "/v1/builds/" + id.String()
	return api.BuildCreate202JSONResponse{Body: out, Headers: api.BuildCreate202ResponseHeaders{Location: &loc}}, nil
}

// publish tells the builders; a lost record only delays the build until a
// builder's next poll.
func (h *Builds) publish(b db.Build) {
	if h.Bus == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.Bus.Publish(ctx, Request(b)); err != nil && h.Log != nil {
		h.Log.Warn("build: publish request (builders poll for it too)", "build_id", b.ID, "error", err.Error())
	}
}

// releaseService is a compose service's settings as a release names them.
func releaseService(s buildsrc.Service) api.ReleaseService {
	rs := api.ReleaseService{Name: s.Name}
	if len(s.Environment) > 0 {
		env := s.Environment
		rs.Environment = &env
	}
	if len(s.Labels) > 0 {
		l := s.Labels
		rs.Labels = &l
	}
	if len(s.Ports) > 0 {
		p := s.Ports
		rs.Ports = &p
	}
	if len(s.Volumes) > 0 {
		v := s.Volumes
		rs.Volumes = &v
	}
	if s.Restart != "" {
		r := api.ReleaseServiceRestart(restartPolicy(s.Restart))
		rs.Restart = &r
	}
	if s.Privileged {
		p := true
		rs.Privileged = &p
	}
	if len(s.CapAdd) > 0 {
		c := s.CapAdd
		rs.CapAdd = &c
	}
	return rs
}

// restartPolicy maps compose's on-failure:N to the release's on-failure.
func restartPolicy(s string) string {
	if strings.HasPrefix(s, "on-failure") {
		return "on-failure"
	}
	return s
}

// resolveImage finds a service's existing image in the platform registry,
// in this organisation's namespace, for every architecture of the build.
func (h *Builds) resolveImage(ctx context.Context, orgSlug, service, ref string, archs []string) (map[string]api.ServiceImage, error) {
	invalid := func(code, format string, args ...any) error {
		return &problem.Error{Status: http.StatusUnprocessableEntity, Code: code, Detail: fmt.Sprintf(format, args...),
			Errors: []problem.FieldError{{In: "body", Field: "services." + service + ".image", Detail: fmt.Sprintf(format, args...)}}}
	}
	rest := ref
	if host, after, ok := strings.Cut(ref, "/"); ok && (strings.ContainsAny(host, ".:") || host == "localhost") {
		if host != h.RegistryHost {
			return nil, invalid("image_external", "service %s names %s, in another registry: push it to %s first", service, ref, h.RegistryHost)
		}
		rest = after
	}
	repo, digest, hasDigest := strings.Cut(rest, "@")
	tag := ""
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo, tag = repo[:i], repo[i+1:]
	}
	if !strings.HasPrefix(repo, orgSlug+"/") {
		return nil, invalid("image_not_found", "service %s names %s, which is not in this organisation's registry namespace %s/", service, ref, orgSlug)
	}
	if !hasDigest {
		if tag == "" {
			tag = "latest"
		}
		_, _, d, err := h.Registry.Manifest(ctx, repo, tag)
		if errors.Is(err, registry.ErrNotFound) {
			return nil, invalid("image_not_found", "service %s names %s, which is not in the registry", service, ref)
		}
		if err != nil {
			return nil, fmt.Errorf("resolve %s: %w", ref, err)
		}
		digest = d.String()
	}
	out := map[string]api.ServiceImage{}
	for _, a := range archs {
		img, err := h.Registry.Resolve(ctx, repo, digest, a)
		switch {
		case errors.Is(err, registry.ErrNotFound):
			return nil, invalid("image_not_found", "service %s names %s@%s, which is not in the registry", service, repo, digest)
		case errors.Is(err, registry.ErrNoPlatform):
			return nil, invalid("architecture_missing", "service %s: %s@%s has no image for %s", service, repo, digest, a)
		case err != nil:
			return nil, fmt.Errorf("resolve %s@%s for %s: %w", repo, digest, a, err)
		}
		_ = img
		out[a] = api.ServiceImage{Image: h.RegistryHost + "/" + repo, Digest: digest}
	}
	return out, nil
}
