package deltas

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/blob"
	"github.com/flock-io/flock-api/internal/deviceimages"
	"github.com/flock-io/flock-api/internal/http/problem"
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
	imgs, err := deviceimages.Load(ctx, h.Pool, p.DeviceID)
	if errors.Is(err, deviceimages.ErrNoDevice) {
		return nil, fmt.Errorf("%w: %w", err, problem.ErrNotFound) // deleted since the guard looked
	}
	if err != nil {
		return nil, err
	}
	fromRepo, okFrom := imgs.Own[from]
	toRepo, okTo := imgs.Target[to]
	if !okFrom || !okTo {
		which := "to"
		if !okFrom {
			which = "from"
		}
		return nil, problem.Errorf(http.StatusNotFound, "image_not_found",
			"%s is not an image of this device's releases (from: the release it runs or ran before; to: its target release)", which)
	}

	q := db.New(h.Pool)
	d, err := q.DeltaCreate(ctx, db.DeltaCreateParams{OrgID: imgs.OrgID, FromRepo: fromRepo, FromDigest: from,
		ToRepo: toRepo, ToDigest: to, Architecture: imgs.Arch})
	created := err == nil
	if errors.Is(err, pgx.ErrNoRows) {
		d, err = q.DeltaGetByPair(ctx, db.DeltaGetByPairParams{OrgID: imgs.OrgID, FromDigest: from, ToDigest: to, Architecture: imgs.Arch})
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
