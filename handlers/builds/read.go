package builds

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/builds"
	"github.com/flock-io/flock-api/internal/http/pagination"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/postgres"
)

// BuildList lists a fleet's builds, newest first.
func (h *Builds) BuildList(ctx context.Context, req api.BuildListRequestObject) (api.BuildListResponseObject, error) {
	beforeT, beforeID, err := pagination.Decode(req.Params.Cursor)
	if err != nil {
		return nil, err
	}
	limit := pagination.Limit(req.Params.Limit)
	var status *string
	if req.Params.Status != nil {
		s := string(*req.Params.Status)
		status = &s
	}
	q := db.New(h.Pool)
	rows, err := q.BuildList(ctx, db.BuildListParams{FleetID: req.FleetId, Status: status,
		BeforeTime: beforeT, BeforeID: beforeID, MaxRows: limit + 1})
	if err != nil {
		return nil, fmt.Errorf("list builds of %s: %w", req.FleetId, err)
	}
	ids := make([]uuid.UUID, len(rows))
	for i, r := range rows {
		ids[i] = r.ID
	}
	all, err := q.BuildImagesOf(ctx, ids)
	if err != nil {
		return nil, fmt.Errorf("images of builds: %w", err)
	}
	imgs := map[uuid.UUID][]db.BuildImage{}
	for _, img := range all {
		imgs[img.BuildID] = append(imgs[img.BuildID], img)
	}
	live, err := q.BuildersLive(ctx, h.builderAlive().Seconds())
	if err != nil {
		return nil, fmt.Errorf("running builders: %w", err)
	}
	items, next, err := pagination.Page(rows, limit, func(b db.Build) (time.Time, uuid.UUID) { return b.CreatedAt, b.ID },
		func(b db.Build) (api.Build, error) { return view(b, imgs[b.ID], live) })
	if err != nil {
		return nil, err
	}
	return api.BuildList200JSONResponse{Items: items, NextCursor: next}, nil
}

// BuildGet reads a build with its images.
func (h *Builds) BuildGet(ctx context.Context, req api.BuildGetRequestObject) (api.BuildGetResponseObject, error) {
	b, imgs, live, err := h.load(ctx, db.New(h.Pool), req.BuildId)
	if err != nil {
		return nil, err
	}
	out, err := view(b, imgs, live)
	if err != nil {
		return nil, err
	}
	return api.BuildGet200JSONResponse(out), nil
}

// BuildCancel asks for a build to stop: queued images are cancelled now;
// the builders working on the others stop them and the last one ends the
// build (or the next read of it does, when none is left).
func (h *Builds) BuildCancel(ctx context.Context, req api.BuildCancelRequestObject) (api.BuildCancelResponseObject, error) {
	q := postgres.Queries(ctx, h.Pool)
	b, err := q.BuildRequestCancel(ctx, req.BuildId)
	if errors.Is(err, pgx.ErrNoRows) {
		cur, gerr := q.BuildGet(ctx, req.BuildId)
		if gerr != nil {
			return nil, fmt.Errorf("load build %s: %w", req.BuildId, gerr)
		}
		return nil, problem.Errorf(http.StatusConflict, "build_ended", "build %s has ended (%s); there is nothing to cancel", cur.ID, cur.Status)
	}
	if err != nil {
		return nil, fmt.Errorf("cancel build %s: %w", req.BuildId, err)
	}
	if _, err := q.BuildImagesCancelQueued(ctx, b.ID); err != nil {
		return nil, fmt.Errorf("cancel queued images of build %s: %w", b.ID, err)
	}
	acc := authAccess(ctx)
	if err := builds.AppendTx(ctx, q, b.ID, 0, []builds.Line{{TS: time.Now(), Service: builds.PlatformService,
		Text: "cancellation asked for by " + acc}}); err != nil {
		return nil, err
	}
	imgs, err := q.BuildImages(ctx, b.ID)
	if err != nil {
		return nil, fmt.Errorf("images of build %s: %w", b.ID, err)
	}
	live, err := q.BuildersLive(ctx, h.builderAlive().Seconds())
	if err != nil {
		return nil, fmt.Errorf("running builders: %w", err)
	}
	out, err := view(b, imgs, live)
	if err != nil {
		return nil, err
	}
	return api.BuildCancel200JSONResponse(out), nil
}

// BuildLogGet sends the log as text: from the database while the build
// runs, from the blob store after.
func (h *Builds) BuildLogGet(ctx context.Context, req api.BuildLogGetRequestObject) (api.BuildLogGetResponseObject, error) {
	b, err := db.New(h.Pool).BuildGet(ctx, req.BuildId)
	if err != nil {
		return nil, fmt.Errorf("load build %s: %w", req.BuildId, err)
	}
	return logText{ctx: ctx, h: h, b: b}, nil
}

type logText struct {
	ctx context.Context
	h   *Builds
	b   db.Build
}

func (r logText) VisitBuildLogGetResponse(w http.ResponseWriter) error {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if r.b.LogKey != nil {
		rc, _, err := r.h.Blobs.Get(r.ctx, *r.b.LogKey)
		if err != nil {
			return fmt.Errorf("read stored log of build %s: %w", r.b.ID, err)
		}
		defer rc.Close()
		zr, err := gzip.NewReader(rc)
		if err != nil {
			return fmt.Errorf("read stored log of build %s: %w", r.b.ID, err)
		}
		w.WriteHeader(http.StatusOK)
		_, err = io.Copy(w, zr)
		return err
	}
	bw := bufio.NewWriterSize(w, 32<<10)
	w.WriteHeader(http.StatusOK)
	err := builds.Lines(r.ctx, db.New(r.h.Pool), r.h.Blobs, r.b, 0, func(l builds.Line) error {
		_, err := bw.WriteString(builds.Format(l))
		return err
	})
	if err != nil {
		return err
	}
	return bw.Flush()
}

// BuildLogStream follows the log over Server-Sent Events until the build
// ends.
func (h *Builds) BuildLogStream(ctx context.Context, req api.BuildLogStreamRequestObject) (api.BuildLogStreamResponseObject, error) {
	var after int64
	switch {
	case req.Params.LastEventId != nil:
		after = *req.Params.LastEventId
	case req.Params.LastEventID != nil:
		n, err := strconv.ParseInt(strings.TrimSpace(*req.Params.LastEventID), 10, 64)
		if err != nil || n < 0 {
			return nil, problem.Invalid("header", "Last-Event-ID", "must be a log line's seq (a whole number)")
		}
		after = n
	}
	if _, err := db.New(h.Pool).BuildGet(ctx, req.BuildId); err != nil {
		return nil, fmt.Errorf("load build %s: %w", req.BuildId, err)
	}
	return logStream{ctx: ctx, h: h, id: req.BuildId, after: after}, nil
}

type logStream struct {
	ctx   context.Context
	h     *Builds
	id    uuid.UUID
	after int64
}

func (s logStream) VisitBuildLogStreamResponse(w http.ResponseWriter) error {
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush()
	heartbeat, poll := s.h.Heartbeat, s.h.PollEvery
	if heartbeat <= 0 {
		heartbeat = defaultHeartbeat
	}
	if poll <= 0 {
		poll = defaultPollEvery
	}
	q := db.New(s.h.Pool)
	bw := bufio.NewWriterSize(w, 32<<10)
	lastWrite := time.Now()
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		// One row a poll; the images and builders only for the end event,
		// or for a cancelled build that may need ending (load ends it).
		b, err := q.BuildGet(s.ctx, s.id)
		if err != nil {
			return fmt.Errorf("load build %s: %w", s.id, err)
		}
		var imgs []db.BuildImage
		var live []db.Builder
		if b.FinishedAt != nil || b.CancelRequestedAt != nil {
			if b, imgs, live, err = s.h.load(s.ctx, q, s.id); err != nil {
				return err
			}
		}
		sent := 0
		err = builds.Lines(s.ctx, q, s.h.Blobs, b, s.after, func(l builds.Line) error {
			data, _ := json.Marshal(lineView(l))
			fmt.Fprintf(bw, "id: %d\nevent: build.log\ndata: %s\n\n", l.Seq, data)
			s.after = l.Seq
			sent++
			if bw.Buffered() > 16<<10 {
				if err := bw.Flush(); err != nil {
					return err
				}
				return rc.Flush()
			}
			return nil
		})
		if err != nil {
			return err
		}
		if b.FinishedAt != nil {
			v, err := view(b, imgs, live)
			if err != nil {
				return err
			}
			data, _ := json.Marshal(v)
			fmt.Fprintf(bw, "event: build.end\ndata: %s\n\n", data)
			if err := bw.Flush(); err != nil {
				return err
			}
			return rc.Flush()
		}
		if sent == 0 && time.Since(lastWrite) >= heartbeat {
			bw.WriteString(": keep-alive\n\n")
			sent = 1
		}
		if sent > 0 {
			lastWrite = time.Now()
			if err := bw.Flush(); err != nil {
				return err
			}
			if err := rc.Flush(); err != nil {
				return err
			}
		}
		select {
		case <-s.ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func lineView(l builds.Line) api.BuildLogLine {
	v := api.BuildLogLine{Seq: l.Seq, Ts: l.TS, Service: l.Service, Line: l.Text}
	if l.Arch != "" {
		a := api.Architecture(l.Arch)
		v.Architecture = &a
	}
	return v
}
