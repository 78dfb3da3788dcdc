package registry

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	ggcr "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// MaxManifestSize is the largest manifest the registry accepts.
const MaxManifestSize = 4 << 20

// embedded is go-containerregistry's registry for manifests and tags, with
// blobs and upload sessions of its own on disk, so that:
//   - blobs stream to and from files (its own handler keeps uploads in
//     memory and hashes a blob on every read);
//   - a repository reads only blobs pushed to it or mounted into it, as in
//     Distribution;
//   - a manifest naming blobs (or, for an index, manifests) its repository
//     lacks is refused with MANIFEST_BLOB_UNKNOWN, as Distribution does;
//   - manifests survive a restart: each accepted PUT and DELETE is appended
//     to a journal that Open replays.
//
// Layout under the data directory: blobs/sha256/<hex>,
// repositories/<repo>/_layers/sha256/<hex> (empty files linking a blob to a
// repository), uploads/<id> (sessions in progress, cleared at start),
// manifests.journal.
type embedded struct {
	dir string
	log *slog.Logger
	reg http.Handler

	// manifestMu orders manifest writes so the journal replays them in the
	// order the handler applied them.
	manifestMu sync.Mutex
	journal    *os.File

	uploadsMu sync.Mutex
	uploads   map[string]*upload
}

type upload struct {
	mu     sync.Mutex
	repo   string
	path   string
	file   *os.File
	size   int64
	hash   hash.Hash
	closed bool
}

type journalEntry struct {
	Op   string `json:"op"` // put or delete
	Repo string `json:"repo"`
	Ref  string `json:"ref"`
	Type string `json:"type,omitempty"`
	Body []byte `json:"body,omitempty"`
}

func openEmbedded(ctx context.Context, dir string, log *slog.Logger) (*embedded, error) {
	for _, d := range []string{"blobs/sha256", "repositories", "uploads"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("registry: %w", err)
		}
	}
	// Sessions do not outlive the process that held them.
	if entries, err := os.ReadDir(filepath.Join(dir, "uploads")); err == nil {
		for _, e := range entries {
			os.Remove(filepath.Join(dir, "uploads", e.Name()))
		}
	}
	e := &embedded{
		dir:     dir,
		log:     log,
		reg:     ggcr.New(ggcr.Logger(slog.NewLogLogger(log.Handler(), slog.LevelDebug))),
		uploads: map[string]*upload{},
	}
	path := filepath.Join(dir, "manifests.journal")
	n, err := e.replay(ctx, path)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("registry: open manifest journal: %w", err)
	}
	e.journal = f
	log.InfoContext(ctx, "embedded registry opened", "dir", dir, "manifest_writes_replayed", n)
	return e, nil
}

// replay applies the journal's writes to the manifest handler in order.
func (e *embedded) replay(ctx context.Context, path string) (int, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("registry: open manifest journal: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 2*MaxManifestSize)
	n := 0
	for sc.Scan() {
		var je journalEntry
		if err := json.Unmarshal(sc.Bytes(), &je); err != nil {
			// A line cut short by a crash ends the journal.
			e.log.WarnContext(ctx, "embedded registry: manifest journal ends in a broken line", "error", err.Error())
			break
		}
		target := "/v2/" + je.Repo + "/manifests/" + je.Ref
		var req *http.Request
		switch je.Op {
		case "put":
			req = httptest.NewRequest(http.MethodPut, target, bytes.NewReader(je.Body))
			req.Header.Set("Content-Type", je.Type)
		case "delete":
			req = httptest.NewRequest(http.MethodDelete, target, nil)
		default:
			continue
		}
		rec := httptest.NewRecorder()
		e.reg.ServeHTTP(rec, req)
		if rec.Code >= 300 && je.Op == "put" {
			e.log.WarnContext(ctx, "embedded registry: a journalled manifest was refused on replay",
				"repo", je.Repo, "ref", je.Ref, "status", rec.Code, "body", rec.Body.String())
		}
		n++
	}
	if err := sc.Err(); err != nil {
		return n, fmt.Errorf("registry: read manifest journal: %w", err)
	}
	return n, nil
}

func (e *embedded) close() error {
	e.uploadsMu.Lock()
	for id, u := range e.uploads {
		u.mu.Lock()
		u.file.Close()
		os.Remove(u.path)
		u.closed = true
		u.mu.Unlock()
		delete(e.uploads, id)
	}
	e.uploadsMu.Unlock()
	e.manifestMu.Lock()
	defer e.manifestMu.Unlock()
	if e.journal == nil {
		return nil
	}
	err := e.journal.Close()
	e.journal = nil
	return err
}

// regError writes a distribution error response.
func regError(w http.ResponseWriter, status int, code, msg string, detail any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	type item struct {
		Code    string `json:"code"`
		Message string `json:"message"`
		Detail  any    `json:"detail,omitempty"`
	}
	json.NewEncoder(w).Encode(struct {
		Errors []item `json:"errors"`
	}{[]item{{code, msg, detail}}})
}

func (e *embedded) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	repo, kind, rest, ok := Route(r.URL.Path)
	switch {
	case !ok:
		if strings.HasPrefix(r.URL.Path, "/v2/") && r.URL.Path != "/v2/" && r.URL.Path != "/v2/_catalog" {
			regError(w, http.StatusNotFound, "NAME_INVALID", "invalid repository name or path", nil)
			return
		}
		e.reg.ServeHTTP(w, r)
	case kind == "blobs" && (rest == "uploads" || strings.HasPrefix(rest, "uploads/")):
		e.serveUpload(w, r, repo, strings.TrimPrefix(strings.TrimPrefix(rest, "uploads"), "/"))
	case kind == "blobs":
		e.serveBlob(w, r, repo, rest)
	case kind == "manifests" && r.Method == http.MethodPut:
		e.putManifest(w, r, repo, rest)
	case kind == "manifests" && r.Method == http.MethodDelete:
		e.deleteManifest(w, r, repo, rest)
	default:
		e.reg.ServeHTTP(w, r)
	}
}

func (e *embedded) blobPath(h v1.Hash) string {
	return filepath.Join(e.dir, "blobs", h.Algorithm, h.Hex)
}

func (e *embedded) linkPath(repo string, h v1.Hash) string {
	return filepath.Join(e.dir, "repositories", filepath.FromSlash(repo), "_layers", h.Algorithm, h.Hex)
}

// hasBlob reports whether repo may read blob h: it is stored and linked.
func (e *embedded) hasBlob(repo string, h v1.Hash) bool {
	if _, err := os.Stat(e.linkPath(repo, h)); err != nil {
		return false
	}
	_, err := os.Stat(e.blobPath(h))
	return err == nil
}

func (e *embedded) link(repo string, h v1.Hash) error {
	p := e.linkPath(repo, h)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, nil, 0o644)
}

func (e *embedded) serveBlob(w http.ResponseWriter, r *http.Request, repo, digest string) {
	h, err := v1.NewHash(digest)
	if err != nil || h.Algorithm != "sha256" {
		regError(w, http.StatusBadRequest, "DIGEST_INVALID", "invalid digest", digest)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if !e.hasBlob(repo, h) {
			regError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown to registry", digest)
			return
		}
		f, err := os.Open(e.blobPath(h))
		if err != nil {
			regError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown to registry", digest)
			return
		}
		defer f.Close()
		w.Header().Set("Docker-Content-Digest", h.String())
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("ETag", `"`+h.String()+`"`)
		http.ServeContent(w, r, "", time.Time{}, f)
	case http.MethodDelete:
		if err := os.Remove(e.linkPath(repo, h)); err != nil {
			regError(w, http.StatusNotFound, "BLOB_UNKNOWN", "blob unknown to registry", digest)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	default:
		regError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "method not allowed", nil)
	}
}

func uploadLocation(repo, id string) string { return "/v2/" + repo + "/blobs/uploads/" + id }

func (e *embedded) serveUpload(w http.ResponseWriter, r *http.Request, repo, id string) {
	if id == "" {
		if r.Method != http.MethodPost {
			regError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "method not allowed", nil)
			return
		}
		e.startUpload(w, r, repo)
		return
	}
	e.uploadsMu.Lock()
	u := e.uploads[id]
	e.uploadsMu.Unlock()
	if u == nil || u.repo != repo {
		regError(w, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", id)
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		regError(w, http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", id)
		return
	}
	switch r.Method {
	case http.MethodGet:
		w.Header().Set("Location", uploadLocation(repo, id))
		w.Header().Set("Range", rangeHeader(u.size))
		w.Header().Set("Docker-Upload-UUID", id)
		w.WriteHeader(http.StatusNoContent)
	case http.MethodPatch:
		if cr := r.Header.Get("Content-Range"); cr != "" {
			var start, end int64
			if _, err := fmt.Sscanf(strings.TrimPrefix(cr, "bytes="), "%d-%d", &start, &end); err != nil || start != u.size {
				w.Header().Set("Location", uploadLocation(repo, id))
				w.Header().Set("Range", rangeHeader(u.size))
				regError(w, http.StatusRequestedRangeNotSatisfiable, "BLOB_UPLOAD_INVALID", "content range does not follow the data received", cr)
				return
			}
		}
		if err := u.append(r.Body); err != nil {
			e.abort(id, u)
			regError(w, http.StatusBadRequest, "BLOB_UPLOAD_INVALID", "reading the chunk failed", err.Error())
			return
		}
		w.Header().Set("Location", uploadLocation(repo, id))
		w.Header().Set("Range", rangeHeader(u.size))
		w.Header().Set("Docker-Upload-UUID", id)
		w.WriteHeader(http.StatusAccepted)
	case http.MethodPut:
		h, err := v1.NewHash(r.URL.Query().Get("digest"))
		if err != nil || h.Algorithm != "sha256" {
			regError(w, http.StatusBadRequest, "DIGEST_INVALID", "a sha256 digest query parameter is required", r.URL.Query().Get("digest"))
			return
		}
		if err := u.append(r.Body); err != nil {
			e.abort(id, u)
			regError(w, http.StatusBadRequest, "BLOB_UPLOAD_INVALID", "reading the upload failed", err.Error())
			return
		}
		got := hex.EncodeToString(u.hash.Sum(nil))
		e.abortLocked(id, u, got == h.Hex)
		if got != h.Hex {
			os.Remove(u.path)
			regError(w, http.StatusBadRequest, "DIGEST_INVALID", "provided digest did not match uploaded content", h.String())
			return
		}
		if err := e.commit(repo, h, u.path); err != nil {
			regError(w, http.StatusInternalServerError, "UNKNOWN", "storing the blob failed", err.Error())
			return
		}
		w.Header().Set("Location", "/v2/"+repo+"/blobs/"+h.String())
		w.Header().Set("Docker-Content-Digest", h.String())
		w.WriteHeader(http.StatusCreated)
	case http.MethodDelete:
		e.abortLocked(id, u, false)
		w.WriteHeader(http.StatusNoContent)
	default:
		regError(w, http.StatusMethodNotAllowed, "UNSUPPORTED", "method not allowed", nil)
	}
}

func rangeHeader(size int64) string {
	if size == 0 {
		return "0-0"
	}
	return "0-" + strconv.FormatInt(size-1, 10)
}

func (u *upload) append(body io.Reader) error {
	n, err := io.Copy(io.MultiWriter(u.file, u.hash), body)
	u.size += n
	return err
}

// abort drops a session after a failed write.
func (e *embedded) abort(id string, u *upload) { e.abortLocked(id, u, false) }

// abortLocked ends a session whose lock the caller holds; keep leaves its
// file for commit to move.
func (e *embedded) abortLocked(id string, u *upload, keep bool) {
	u.closed = true
	u.file.Close()
	if !keep {
		os.Remove(u.path)
	}
	e.uploadsMu.Lock()
	delete(e.uploads, id)
	e.uploadsMu.Unlock()
}

// commit moves a verified file into place and links it to repo.
func (e *embedded) commit(repo string, h v1.Hash, path string) error {
	if _, err := os.Stat(e.blobPath(h)); err == nil {
		os.Remove(path)
	} else if err := os.Rename(path, e.blobPath(h)); err != nil {
		os.Remove(path)
		return err
	}
	return e.link(repo, h)
}

func (e *embedded) newUpload(repo string) (string, *upload, error) {
	id := rand.Text()
	path := filepath.Join(e.dir, "uploads", id)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return "", nil, err
	}
	return id, &upload{repo: repo, path: path, file: f, hash: sha256.New()}, nil
}

func (e *embedded) startUpload(w http.ResponseWriter, r *http.Request, repo string) {
	q := r.URL.Query()
	// A cross-repository mount of a blob the source repository has.
	if m, from := q.Get("mount"), q.Get("from"); m != "" && from != "" {
		if h, err := v1.NewHash(m); err == nil && ValidRepository(from) && e.hasBlob(from, h) {
			if err := e.link(repo, h); err != nil {
				regError(w, http.StatusInternalServerError, "UNKNOWN", "mounting the blob failed", err.Error())
				return
			}
			w.Header().Set("Location", "/v2/"+repo+"/blobs/"+h.String())
			w.Header().Set("Docker-Content-Digest", h.String())
			w.WriteHeader(http.StatusCreated)
			return
		}
	}
	id, u, err := e.newUpload(repo)
	if err != nil {
		regError(w, http.StatusInternalServerError, "UNKNOWN", "starting the upload failed", err.Error())
		return
	}
	// A monolithic upload: the whole blob in the POST.
	if d := q.Get("digest"); d != "" {
		h, err := v1.NewHash(d)
		if err != nil || h.Algorithm != "sha256" {
			u.file.Close()
			os.Remove(u.path)
			regError(w, http.StatusBadRequest, "DIGEST_INVALID", "invalid digest", d)
			return
		}
		err = u.append(r.Body)
		u.file.Close()
		if err != nil {
			os.Remove(u.path)
			regError(w, http.StatusBadRequest, "BLOB_UPLOAD_INVALID", "reading the upload failed", err.Error())
			return
		}
		if hex.EncodeToString(u.hash.Sum(nil)) != h.Hex {
			os.Remove(u.path)
			regError(w, http.StatusBadRequest, "DIGEST_INVALID", "provided digest did not match uploaded content", d)
			return
		}
		if err := e.commit(repo, h, u.path); err != nil {
			regError(w, http.StatusInternalServerError, "UNKNOWN", "storing the blob failed", err.Error())
			return
		}
		w.Header().Set("Location", "/v2/"+repo+"/blobs/"+h.String())
		w.Header().Set("Docker-Content-Digest", h.String())
		w.WriteHeader(http.StatusCreated)
		return
	}
	e.uploadsMu.Lock()
	e.uploads[id] = u
	e.uploadsMu.Unlock()
	w.Header().Set("Location", uploadLocation(repo, id))
	w.Header().Set("Range", "0-0")
	w.Header().Set("Docker-Upload-UUID", id)
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
}

// putManifest checks that everything the manifest names is in the
// repository, then stores it and journals it.
func (e *embedded) putManifest(w http.ResponseWriter, r *http.Request, repo, ref string) {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxManifestSize+1))
	if err != nil {
		regError(w, http.StatusBadRequest, "MANIFEST_INVALID", "reading the manifest failed", err.Error())
		return
	}
	if len(body) > MaxManifestSize {
		regError(w, http.StatusRequestEntityTooLarge, "MANIFEST_INVALID", fmt.Sprintf("manifest larger than %d bytes", MaxManifestSize), nil)
		return
	}
	mt := types.MediaType(r.Header.Get("Content-Type"))
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
	}
	if err := json.Unmarshal(body, &probe); err != nil {
		regError(w, http.StatusBadRequest, "MANIFEST_INVALID", "manifest is not JSON", err.Error())
		return
	}
	if mt == "" || mt == "application/json" {
		mt = probe.MediaType
	}
	index := mt.IsIndex() || (mt == "" && probe.Manifests != nil)
	if index {
		im, err := v1.ParseIndexManifest(bytes.NewReader(body))
		if err != nil {
			regError(w, http.StatusBadRequest, "MANIFEST_INVALID", "invalid image index", err.Error())
			return
		}
		for _, m := range im.Manifests {
			if !m.MediaType.IsImage() && !m.MediaType.IsIndex() {
				continue
			}
			rec := httptest.NewRecorder()
			e.reg.ServeHTTP(rec, httptest.NewRequest(http.MethodHead, "/v2/"+repo+"/manifests/"+m.Digest.String(), nil))
			if rec.Code != http.StatusOK {
				regError(w, http.StatusBadRequest, "MANIFEST_BLOB_UNKNOWN", "manifest references a manifest the repository does not have", m.Digest.String())
				return
			}
		}
	} else {
		m, err := v1.ParseManifest(bytes.NewReader(body))
		if err != nil {
			regError(w, http.StatusBadRequest, "MANIFEST_INVALID", "invalid image manifest", err.Error())
			return
		}
		for _, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if !d.MediaType.IsDistributable() || len(d.URLs) > 0 {
				continue
			}
			if !e.hasBlob(repo, d.Digest) {
				regError(w, http.StatusBadRequest, "MANIFEST_BLOB_UNKNOWN", "blob unknown to registry", d.Digest.String())
				return
			}
		}
	}
	e.manifestMu.Lock()
	defer e.manifestMu.Unlock()
	if e.journal == nil {
		regError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "the registry is closed", nil)
		return
	}
	req := r.Clone(r.Context())
	req.Body = io.NopCloser(bytes.NewReader(body))
	req.ContentLength = int64(len(body))
	rec := httptest.NewRecorder()
	e.reg.ServeHTTP(rec, req)
	if rec.Code == http.StatusCreated {
		if err := e.record(journalEntry{Op: "put", Repo: repo, Ref: ref, Type: string(mt), Body: body}); err != nil {
			e.log.ErrorContext(r.Context(), "embedded registry: journal a manifest", "repo", repo, "ref", ref, "error", err.Error())
			regError(w, http.StatusInternalServerError, "UNKNOWN", "recording the manifest failed", nil)
			return
		}
	}
	copyRecorded(w, rec)
}

func (e *embedded) deleteManifest(w http.ResponseWriter, r *http.Request, repo, ref string) {
	e.manifestMu.Lock()
	defer e.manifestMu.Unlock()
	if e.journal == nil {
		regError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "the registry is closed", nil)
		return
	}
	rec := httptest.NewRecorder()
	e.reg.ServeHTTP(rec, r)
	if rec.Code == http.StatusAccepted {
		if err := e.record(journalEntry{Op: "delete", Repo: repo, Ref: ref}); err != nil {
			e.log.ErrorContext(r.Context(), "embedded registry: journal a manifest deletion", "repo", repo, "ref", ref, "error", err.Error())
		}
	}
	copyRecorded(w, rec)
}

// record appends one journal line and syncs it; manifestMu is held.
func (e *embedded) record(je journalEntry) error {
	b, err := json.Marshal(je)
	if err != nil {
		return err
	}
	if _, err := e.journal.Write(append(b, '\n')); err != nil {
		return err
	}
	return e.journal.Sync()
}

func copyRecorded(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	w.Write(rec.Body.Bytes())
}

// transport serves requests with the handler in this process: the handler
// runs in its own goroutine and streams its response through a pipe.
func (e *embedded) transport() http.RoundTripper { return handlerTransport{h: e} }

type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	// The handler sees a server's request: a path, not an absolute URL.
	sreq := req.Clone(req.Context())
	sreq.URL = &url.URL{Path: req.URL.Path, RawPath: req.URL.RawPath, RawQuery: req.URL.RawQuery}
	sreq.RequestURI = sreq.URL.RequestURI()
	sreq.Host = req.URL.Host
	sreq.RemoteAddr = "127.0.0.1:0"
	sreq.Proto, sreq.ProtoMajor, sreq.ProtoMinor = "HTTP/1.1", 1, 1
	if sreq.Body == nil {
		sreq.Body = http.NoBody
	}
	pr, pw := io.Pipe()
	rw := &pipeWriter{header: http.Header{}, pw: pw, ready: make(chan struct{})}
	go func() {
		defer func() {
			if v := recover(); v != nil {
				pw.CloseWithError(fmt.Errorf("registry handler panicked: %v", v))
				rw.WriteHeader(http.StatusInternalServerError)
				return
			}
			rw.WriteHeader(http.StatusOK)
			pw.Close()
		}()
		defer sreq.Body.Close()
		t.h.ServeHTTP(rw, sreq)
	}()
	select {
	case <-rw.ready:
	case <-req.Context().Done():
		pr.CloseWithError(req.Context().Err())
		return nil, req.Context().Err()
	}
	resp := &http.Response{
		Status:        fmt.Sprintf("%d %s", rw.status, http.StatusText(rw.status)),
		StatusCode:    rw.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        rw.sent,
		Body:          pr,
		ContentLength: -1,
		Request:       req,
	}
	if n, err := strconv.ParseInt(rw.sent.Get("Content-Length"), 10, 64); err == nil {
		resp.ContentLength = n
	}
	if req.Method == http.MethodHead || rw.status == http.StatusNoContent || rw.status == http.StatusNotModified {
		// No body follows; the handler's end still closes the pipe.
		go io.Copy(io.Discard, pr)
		resp.Body = http.NoBody
	}
	return resp, nil
}

// pipeWriter is the handler's ResponseWriter: headers are handed over at
// WriteHeader, the body streams through the pipe.
type pipeWriter struct {
	header http.Header
	sent   http.Header
	status int
	pw     *io.PipeWriter
	once   sync.Once
	ready  chan struct{}
}

func (w *pipeWriter) Header() http.Header { return w.header }

func (w *pipeWriter) WriteHeader(status int) {
	w.once.Do(func() {
		w.status = status
		w.sent = w.header.Clone()
		close(w.ready)
	})
}

func (w *pipeWriter) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.pw.Write(b)
}

func (w *pipeWriter) Flush() {}
