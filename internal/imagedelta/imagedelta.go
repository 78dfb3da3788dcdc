// Package imagedelta makes and applies the delta from one container image to
// another of the same architecture: what a device running image A downloads
// instead of the layers of image B it lacks (issue 14).
//
// A delta is one file of media type MediaType: a tar whose first entry,
// IndexName, is the JSON Index, followed by one entry per layer of B that A
// does not have (in B's order), each an internal/layerdelta patch that
// rebuilds that layer's uncompressed tar from A's layers. A layer of B whose
// diffID is one of A's costs nothing: the index marks it present.
//
// Compute spools A's uncompressed layers to temporary files (layerdelta reads
// its bases at random) and streams each missing layer of B through
// layerdelta.Diff; it holds no layer in memory. Apply rebuilds every layer of
// B the caller asks for and checks its diffID; a delta that is truncated,
// corrupted, made against other layers or rebuilding anything but the layer
// the index names is refused with an error wrapping one of the sentinels,
// never a wrong layer presented as right.
package imagedelta

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/flock-io/flock-api/internal/layerdelta"
	"github.com/flock-io/flock-api/internal/registry"
)

// MediaType is the delta's media type (the device endpoint's 200 body).
const MediaType = "application/vnd.flock.image-delta.v1+tar"

// Version is the index version Compute writes and Apply reads.
const Version = 1

// IndexName is the delta's first tar entry.
const IndexName = "delta.json"

// maxIndex bounds the index Apply reads (an image has at most a few hundred
// layers).
const maxIndex = 4 << 20

// Sentinel errors; Apply's and Compute's errors wrap one of them where they
// apply (and the layerdelta error beneath, if any).
var (
	// ErrCorrupt: the delta is not a well-formed delta of this version.
	ErrCorrupt = errors.New("imagedelta: corrupt delta")
	// ErrTruncated: the delta ends early.
	ErrTruncated = errors.New("imagedelta: truncated delta")
	// ErrVersion: a delta of another version.
	ErrVersion = errors.New("imagedelta: unsupported delta version")
	// ErrMissingBase: the caller lacks a layer of the image the delta is
	// made against (or has one of other content).
	ErrMissingBase = errors.New("imagedelta: a layer the delta needs is missing")
	// ErrMismatch: a rebuilt layer's diffID is not the one the index names.
	ErrMismatch = errors.New("imagedelta: rebuilt layer does not match its diffID")
	// ErrNotTar: a layer of the target image is not a tar layerdelta can
	// split (Compute); the layers must be pulled.
	ErrNotTar = errors.New("imagedelta: target layer is not a tar a delta can be made of")
)

// Index is the delta's first entry.
type Index struct {
	Version   int    `json:"version"`
	MediaType string `json:"media_type"`
	From      Ref    `json:"from"`
	To        Ref    `json:"to"`
	// Base lists A's layers, lowest first: every patch is made against all
	// of them, in this order.
	Base []BaseLayer `json:"base"`
	// Layers lists B's layers, lowest first.
	Layers []IndexEntry `json:"layers"`
}

// Ref names an image: Digest as the device knows it (maybe an index),
// Manifest the platform manifest the delta was made of.
type Ref struct {
	Repo     string `json:"repo,omitempty"`
	Digest   string `json:"digest"`
	Manifest string `json:"manifest"`
}

// BaseLayer is one layer of the image the delta starts from.
type BaseLayer struct {
	DiffID string `json:"diff_id"`
	// Size is the uncompressed size.
	Size int64 `json:"size"`
}

// IndexEntry is one layer of the target image.
type IndexEntry struct {
	// Digest, Size and MediaType describe the compressed layer as the
	// registry serves it.
	Digest    string          `json:"digest"`
	DiffID    string          `json:"diff_id"`
	Size      int64           `json:"size"`
	MediaType types.MediaType `json:"media_type,omitempty"`
	// Present: the device has a layer with this diffID (it is one of
	// Base): nothing is sent for it.
	Present bool `json:"present,omitempty"`
	// Patch names the tar entry holding the layer's patch when not present.
	Patch string `json:"patch,omitempty"`
	// PatchSize is that entry's size.
	PatchSize int64 `json:"patch_size,omitempty"`
	// UncompressedSize is the rebuilt tar's size.
	UncompressedSize int64 `json:"uncompressed_size,omitempty"`
}

// Stats describes a delta Compute wrote.
type Stats struct {
	Layers  int // layers of B
	Present int // of them, in A already
	Patched int // of them, sent as patches
	// LayersSize is what pulling B's missing layers would download: the
	// sum of their compressed sizes.
	LayersSize int64
	// DeltaSize is the bytes written to w.
	DeltaSize int64
	// BaseSize is A's uncompressed size (spooled to disk).
	BaseSize int64
	// Uncompressed is the uncompressed size of B's patched layers.
	Uncompressed int64
	Duration     time.Duration
}

// LayerOpener opens a layer of repo by its (compressed) digest;
// (*registry.Registry).Layer is one.
type LayerOpener func(ctx context.Context, repo string, digest v1.Hash) (v1.Layer, error)

// Options tune Compute. The zero value is usable.
type Options struct {
	// Diff is handed to layerdelta.Diff. Nil uses zstd's "better" level for
	// per-file patches, which holds far less memory than its best level.
	Diff *layerdelta.Options
}

// Compute writes the delta from image from to image to (both resolved for one
// architecture) to w, with temporary files under tmpDir ("" for the
// system's). open opens the layers of both.
func Compute(ctx context.Context, from, to registry.Image, open LayerOpener, w io.Writer, tmpDir string, opts *Options) (Stats, error) {
	start := time.Now()
	st := Stats{Layers: len(to.Layers)}
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Diff == nil {
		o.Diff = &layerdelta.Options{Level: zstd.SpeedBetterCompression}
	}
	dir, err := os.MkdirTemp(tmpDir, "imagedelta-*")
	if err != nil {
		return st, err
	}
	defer os.RemoveAll(dir)

	idx := Index{Version: Version, MediaType: MediaType,
		From: Ref{Repo: from.Repo, Digest: from.Digest, Manifest: from.Manifest.String()},
		To:   Ref{Repo: to.Repo, Digest: to.Digest, Manifest: to.Manifest.String()}}

	// A's layers, uncompressed, on disk.
	have := map[v1.Hash]bool{}
	var bases []layerdelta.Layer
	for i, l := range from.Layers {
		f, n, err := spool(ctx, dir, "base-"+strconv.Itoa(i), func() (io.ReadCloser, error) {
			vl, err := open(ctx, from.Repo, l.Digest)
			if err != nil {
				return nil, err
			}
			return vl.Uncompressed()
		}, l.DiffID)
		if err != nil {
			return st, fmt.Errorf("imagedelta: layer %d (%s) of %s@%s: %w", i, l.Digest, from.Repo, from.Manifest, err)
		}
		defer f.Close()
		bases = append(bases, layerdelta.Layer{R: f, Size: n})
		idx.Base = append(idx.Base, BaseLayer{DiffID: l.DiffID.String(), Size: n})
		have[l.DiffID] = true
		st.BaseSize += n
	}

	// B's layers: a patch for each one A lacks, spooled, since the index
	// that comes first names their sizes.
	type patchFile struct {
		f    *os.File
		name string
		size int64
	}
	var patches []patchFile
	defer func() {
		for _, p := range patches {
			p.f.Close()
		}
	}()
	for i, l := range to.Layers {
		e := IndexEntry{Digest: l.Digest.String(), DiffID: l.DiffID.String(), Size: l.Size, MediaType: l.MediaType}
		if have[l.DiffID] {
			e.Present = true
			st.Present++
			idx.Layers = append(idx.Layers, e)
			continue
		}
		st.LayersSize += l.Size
		f, err := os.CreateTemp(dir, "patch-*")
		if err != nil {
			return st, err
		}
		patches = append(patches, patchFile{f: f})
		ls, err := diffLayer(ctx, to.Repo, l, open, bases, f, o.Diff)
		if err != nil {
			return st, fmt.Errorf("imagedelta: layer %d (%s) of %s@%s: %w", i, l.Digest, to.Repo, to.Manifest, err)
		}
		e.Patch = "layers/" + strconv.Itoa(i) + ".patch"
		e.PatchSize = ls.PatchSize
		e.UncompressedSize = ls.TargetSize
		patches[len(patches)-1].name, patches[len(patches)-1].size = e.Patch, ls.PatchSize
		st.Patched++
		st.Uncompressed += ls.TargetSize
		idx.Layers = append(idx.Layers, e)
	}

	cw := &countWriter{w: w}
	tw := tar.NewWriter(cw)
	ib, err := json.MarshalIndent(idx, "", " ")
	if err != nil {
		return st, err
	}
	if err := tw.WriteHeader(entryHeader(IndexName, int64(len(ib)))); err != nil {
		return st, err
	}
	if _, err := tw.Write(ib); err != nil {
		return st, err
	}
	for _, p := range patches {
		if err := tw.WriteHeader(entryHeader(p.name, p.size)); err != nil {
			return st, err
		}
		if _, err := p.f.Seek(0, io.SeekStart); err != nil {
			return st, err
		}
		if n, err := io.Copy(tw, p.f); err != nil || n != p.size {
			return st, fmt.Errorf("imagedelta: copy patch %s (%d of %d bytes): %v", p.name, n, p.size, err)
		}
	}
	if err := tw.Close(); err != nil {
		return st, err
	}
	st.DeltaSize = cw.n
	st.Duration = time.Since(start)
	return st, nil
}

// entryHeader is a tar header with nothing but name and size, so equal
// deltas are equal bytes.
func entryHeader(name string, size int64) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, Format: tar.FormatPAX}
}

// spool copies what opening yields to a new file of dir, checks its sha256
// against want (when set), and returns the file and its size.
func spool(ctx context.Context, dir, name string, opening func() (io.ReadCloser, error), want v1.Hash) (*os.File, int64, error) {
	rc, err := opening()
	if err != nil {
		return nil, 0, err
	}
	defer rc.Close()
	f, err := os.Create(dir + "/" + name)
	if err != nil {
		return nil, 0, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), ctxReader{ctx, rc})
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if want.Hex != "" && hex.EncodeToString(h.Sum(nil)) != want.Hex {
		f.Close()
		return nil, 0, fmt.Errorf("uncompressed content is sha256:%x, the image says %s", h.Sum(nil), want)
	}
	return f, n, nil
}

func diffLayer(ctx context.Context, repo string, l registry.Layer, open LayerOpener, bases []layerdelta.Layer, w io.Writer, opts *layerdelta.Options) (layerdelta.Stats, error) {
	vl, err := open(ctx, repo, l.Digest)
	if err != nil {
		return layerdelta.Stats{}, err
	}
	rc, err := vl.Uncompressed()
	if err != nil {
		return layerdelta.Stats{}, err
	}
	defer rc.Close()
	ls, err := layerdelta.Diff(ctx, bases, ctxReader{ctx, rc}, w, opts)
	if err != nil {
		if errors.Is(err, layerdelta.ErrTarUnsound) {
			return ls, fmt.Errorf("%w: %w", ErrNotTar, err)
		}
		return ls, err
	}
	if got := ls.Target.String(); got != l.DiffID.String() {
		return ls, fmt.Errorf("uncompressed content is %s, the image says %s", got, l.DiffID)
	}
	return ls, nil
}

// ctxReader stops a long copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
