package deltas

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/blob"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/targetstate"
	"github.com/flock-io/flock-api/workers/delta"
)

// DeviceDeltaGet serves the delta from image `from` (of the release the
// device runs or ran before) to image `to` (of its target release): 200 with
// the delta when it is ready, 202 while it is queued or computed (the first
// ask queues it), 409 when there is none to have (not smaller than the
// layers, or failed): the device pulls the layers.
func (h *Deltas) DeviceDeltaGet(ctx context.Context, req api.DeviceDeltaGetRequestObject) (api.DeviceDeltaGetResponseObject, error) {
	p := auth.PrincipalFrom(ctx)
	if p == nil || p.Kind != auth.KindDevice {
		return nil, problem.ErrNotFound // the policy lets devices only
	}
	from, to := string(req.Params.From), string(req.Params.To)
	if !validDigest(from) {
		return nil, problem.Invalid("query", "from", "from must be a sha256 digest (sha256: and 64 lowercase hex digits)")
	}
	if !validDigest(to) {
		return nil, problem.Invalid("query", "to", "to must be a sha256 digest (sha256: and 64 lowercase hex digits)")
	}
	if from == to {
		return nil, problem.Invalid("query", "to", "from and to are the same image: there is nothing to download")
	}
	imgs, err := h.deviceImages(ctx, p.DeviceID)
	if err != nil {
		return nil, err
	}
	fromRepo, okFrom := imgs.from[from]
	toRepo, okTo := imgs.to[to]
	if !okFrom || !okTo {
		which := "to"
		if !okFrom {
			which = "from"
		}
		return nil, problem.Errorf(http.StatusNotFound, "image_not_found",
			"%s is not an image of this device's releases (from: the release it runs or ran before; to: its target release)", which)
	}

	q := db.New(h.Pool)
	d, err := q.DeltaCreate(ctx, db.DeltaCreateParams{OrgID: imgs.org, FromRepo: fromRepo, FromDigest: from,
		ToRepo: toRepo, ToDigest: to, Architecture: imgs.arch})
	created := err == nil
	if errors.Is(err, pgx.ErrNoRows) {
		d, err = q.DeltaGetByPair(ctx, db.DeltaGetByPairParams{OrgID: imgs.org, FromDigest: from, ToDigest: to, Architecture: imgs.arch})
	}
	if err != nil {
		return nil, fmt.Errorf("delta %s → %s: %w", from, to, err)
	}
	if created {
		h.request(ctx, d)
		return h.accepted(d), nil
	}

	switch d.State {
	case delta.StateReady:
		resp, err := h.serve(ctx, d)
		if !errors.Is(err, blob.ErrNotFound) {
			return resp, err
		}
		// The object is gone (a bucket policy, an operator): compute anew.
		h.log().Warn("stored delta missing; computing it again", "delta", d.ID, "key", *d.BlobKey)
		lost, err := q.DeltaLost(ctx, db.DeltaLostParams{ID: d.ID, BlobKey: d.BlobKey})
		if err == nil {
			h.request(ctx, lost)
			return h.accepted(lost), nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("delta %s: %w", d.ID, err)
		}
		// Another ask did so first.
		return h.accepted(d), nil
	case delta.StateNotSmaller:
		return nil, problem.Errorf(http.StatusConflict, "delta_not_smaller",
			"a delta from %s to %s would be %d bytes against %d bytes of layers it replaces: not worth it; pull the layers",
			from, to, deref(d.Size), deref(d.LayersSize))
	case delta.StateFailed:
		return nil, problem.Errorf(http.StatusConflict, "delta_failed",
			"no delta from %s to %s could be made: %s; pull the layers", from, to, d.Error)
	}
	// pending or computing: publish again when the request looks lost.
	again, err := q.DeltaRerequest(ctx, db.DeltaRerequestParams{ID: d.ID, AfterSeconds: h.retryAfter().Seconds()})
	switch {
	case err == nil:
		h.request(ctx, again)
		d = again
	case !errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("delta %s: %w", d.ID, err)
	}
	return h.accepted(d), nil
}

// serve streams a ready delta from the blob store.
func (h *Deltas) serve(ctx context.Context, d db.ImageDelta) (api.DeviceDeltaGetResponseObject, error) {
	if h.Blobs == nil {
		return nil, problem.Errorf(http.StatusConflict, "delta_failed", "deltas are not served by this deployment; pull the layers")
	}
	body, size, err := h.Blobs.Get(ctx, *d.BlobKey)
	if err != nil {
		return nil, fmt.Errorf("delta %s: %w", d.ID, err)
	}
	return api.DeviceDeltaGet200ApplicationvndFlockImageDeltaV1TarResponse{Body: body, ContentLength: size,
		Headers: api.DeviceDeltaGet200ResponseHeaders{FlockDeltaLayersSize: d.LayersSize}}, nil
}

func (h *Deltas) accepted(d db.ImageDelta) api.DeviceDeltaGet202JSONResponse {
	secs := int(math.Ceil(h.retryAfter().Seconds()))
	state := api.ImageDeltaState(d.State)
	if state != api.ImageDeltaStateComputing {
		state = api.ImageDeltaStatePending
	}
	return api.DeviceDeltaGet202JSONResponse{
		Body: api.ImageDelta{Id: d.ID, State: state, From: api.Digest(d.FromDigest), To: api.Digest(d.ToDigest),
			Architecture: api.Architecture(d.Architecture)},
		Headers: api.DeviceDeltaGet202ResponseHeaders{RetryAfter: &secs},
	}
}

// request publishes d's request. A request that does not go out is
// published again by an ask after RetryAfter (the row's requested_at).
func (h *Deltas) request(ctx context.Context, d db.ImageDelta) {
	if h.Bus == nil {
		return
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
	defer cancel()
	if err := h.Bus.Publish(pctx, delta.Request(d)); err != nil {
		h.log().Warn("publish delta request; a later ask publishes it again", "delta", d.ID, "err", err)
	}
}

// images are the digests a device may ask deltas between, with their
// repositories in the platform registry.
type images struct {
	org  uuid.UUID
	arch string
	from map[string]string // digest → repository: running and previous releases
	to   map[string]string // target release
}

// deviceImages reads, in one snapshot, the images of the device's running
// and previous releases (its fleet's) and of its target release, for its
// architecture and in its organisation's repositories: what the registry
// proxy lets it pull.
func (h *Deltas) deviceImages(ctx context.Context, device uuid.UUID) (images, error) {
	out := images{from: map[string]string{}, to: map[string]string{}}
	var dev db.DeltaDeviceRow
	var own []db.DeltaReleaseServicesRow
	var target []db.TargetReleasesRow
	err := pgx.BeginTxFunc(ctx, h.Pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		q := db.New(tx)
		var err error
		if dev, err = q.DeltaDevice(ctx, device); err != nil {
			return err
		}
		choices, err := q.TargetChoices(ctx, []uuid.UUID{device})
		if err != nil {
			return err
		}
		if len(choices) == 1 && choices[0].ReleaseID.Valid {
			if target, err = q.TargetReleases(ctx, []uuid.UUID{choices[0].ReleaseID.UUID}); err != nil {
				return err
			}
		}
		var ids []uuid.UUID
		for _, r := range []uuid.NullUUID{dev.RunningReleaseID, dev.PreviousReleaseID} {
			if r.Valid {
				ids = append(ids, r.UUID)
			}
		}
		if len(ids) > 0 {
			own, err = q.DeltaReleaseServices(ctx, db.DeltaReleaseServicesParams{Ids: ids, FleetID: dev.FleetID})
		}
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return out, fmt.Errorf("device %s: %w", device, problem.ErrNotFound) // deleted since the guard looked
	}
	if err != nil {
		return out, fmt.Errorf("load the releases of device %s: %w", device, err)
	}
	out.org, out.arch = dev.OrgID, dev.Architecture
	add := func(into map[string]string, raw []byte) error {
		var svcs []api.ReleaseService
		if err := json.Unmarshal(raw, &svcs); err != nil {
			return fmt.Errorf("decode release services of device %s: %w", device, err)
		}
		for _, s := range svcs {
			img := targetstate.Image(s, dev.Architecture)
			if img == nil {
				continue
			}
			repo := Repository(img.Image)
			if !strings.HasPrefix(repo, dev.OrgSlug+"/") {
				continue // only the organisation's repositories
			}
			into[string(img.Digest)] = repo
		}
		return nil
	}
	for _, r := range own {
		if err := add(out.from, r.Services); err != nil {
			return out, err
		}
	}
	for _, r := range target {
		if err := add(out.to, r.Services); err != nil {
			return out, err
		}
	}
	return out, nil
}

// Repository is an image reference's repository in the platform registry:
// without a tag or digest and without the registry host that may prefix it
// (a first component with a dot or a colon, or localhost).
func Repository(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	if first, rest, ok := strings.Cut(ref, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		ref = rest
	}
	return ref
}

func validDigest(s string) bool {
	h, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(h) != 64 || strings.ToLower(h) != h {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}

func deref(p *int64) int64 {
	if p == nil {
		return 0
	}
	return *p
}
