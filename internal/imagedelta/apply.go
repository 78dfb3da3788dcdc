package imagedelta

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/flock-io/flock-api/internal/layerdelta"
)

// ReadIndex reads a delta's index, its first entry, leaving r after it; it
// checks the index's version and shape, not the patches.
func ReadIndex(r io.Reader) (Index, error) {
	_, idx, err := readIndex(tar.NewReader(r))
	return idx, err
}

func readIndex(tr *tar.Reader) (*tar.Reader, Index, error) {
	var idx Index
	h, err := tr.Next()
	if err != nil {
		return tr, idx, tarErr(err, "index")
	}
	if h.Name != IndexName || h.Typeflag != tar.TypeReg {
		return tr, idx, fmt.Errorf("%w: first entry is %q, not %s", ErrCorrupt, h.Name, IndexName)
	}
	if h.Size > maxIndex {
		return tr, idx, fmt.Errorf("%w: index of %d bytes", ErrCorrupt, h.Size)
	}
	b, err := io.ReadAll(tr)
	if err != nil {
		return tr, idx, tarErr(err, "index")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&idx); err != nil {
		return tr, idx, fmt.Errorf("%w: index: %v", ErrCorrupt, err)
	}
	if idx.Version != Version {
		return tr, idx, fmt.Errorf("%w: %d (this build reads %d)", ErrVersion, idx.Version, Version)
	}
	if err := idx.check(); err != nil {
		return tr, idx, fmt.Errorf("%w: index: %v", ErrCorrupt, err)
	}
	return tr, idx, nil
}

func (idx Index) check() error {
	base := map[string]bool{}
	for i, b := range idx.Base {
		if !validDigest(b.DiffID) || b.Size < 0 {
			return fmt.Errorf("base layer %d: diff_id %q, size %d", i, b.DiffID, b.Size)
		}
		base[b.DiffID] = true
	}
	for i, e := range idx.Layers {
		if !validDigest(e.DiffID) {
			return fmt.Errorf("layer %d: diff_id %q", i, e.DiffID)
		}
		if e.Present != (e.Patch == "") {
			return fmt.Errorf("layer %d: present %v with patch %q", i, e.Present, e.Patch)
		}
		if e.Present && !base[e.DiffID] {
			return fmt.Errorf("layer %d is present but not one of the base layers", i)
		}
		if !e.Present && e.PatchSize <= 0 {
			return fmt.Errorf("layer %d: patch size %d", i, e.PatchSize)
		}
	}
	return nil
}

func validDigest(s string) bool {
	h, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(h) != 64 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil && strings.ToLower(h) == h
}

// Have returns the uncompressed layer with a diffID the caller holds.
type Have func(diffID string) (layerdelta.Layer, bool)

// Out returns where to write a target layer's uncompressed tar, or nil to
// skip the layer. Apply closes the writer after the layer was rebuilt and
// verified; on any error it does not close it (it calls CloseWithError
// when the writer has one, as io.PipeWriter does), and whatever was written
// must be discarded.
type Out func(layer IndexEntry) (io.WriteCloser, error)

// Apply rebuilds the target image's layers from the delta read from r: for
// each layer of the index, in order, it asks out where to write it and
// writes its uncompressed tar there (a present layer is copied from have),
// checking its sha256 against the index's diffID. have supplies the layers
// of the image the delta starts from, by diffID. The index is returned even
// when a layer fails, once it was read.
//
// The whole delta is read, so a damaged patch of a skipped layer is still
// an error: a delta either applies entirely or not at all.
func Apply(ctx context.Context, r io.Reader, have Have, out Out) (Index, error) {
	tr, idx, err := readIndex(tar.NewReader(r))
	if err != nil {
		return idx, err
	}
	var bases []layerdelta.Layer
	needBases := false
	for _, e := range idx.Layers {
		needBases = needBases || !e.Present
	}
	baseByID := map[string]layerdelta.Layer{}
	for i, b := range idx.Base {
		l, ok := have(b.DiffID)
		if !ok {
			if !needBases {
				continue // only present layers: those are looked up alone
			}
			return idx, fmt.Errorf("%w: base layer %d (%s)", ErrMissingBase, i, b.DiffID)
		}
		if l.Size != b.Size {
			return idx, fmt.Errorf("%w: base layer %d (%s) has %d bytes, the delta wants %d", ErrMissingBase, i, b.DiffID, l.Size, b.Size)
		}
		bases = append(bases, l)
		baseByID[b.DiffID] = l
	}

	for i, e := range idx.Layers {
		if err := ctx.Err(); err != nil {
			return idx, err
		}
		if e.Present {
			l, ok := baseByID[e.DiffID]
			if !ok {
				if l, ok = have(e.DiffID); !ok {
					return idx, fmt.Errorf("%w: layer %d (%s) is marked present", ErrMissingBase, i, e.DiffID)
				}
			}
			if err := write(out, e, func(w io.Writer) error {
				_, err := io.Copy(w, io.NewSectionReader(l.R, 0, l.Size))
				return err
			}); err != nil {
				return idx, fmt.Errorf("layer %d (%s): %w", i, e.DiffID, err)
			}
			continue
		}
		h, err := tr.Next()
		if err != nil {
			return idx, tarErr(err, "patch of layer "+fmt.Sprint(i))
		}
		if h.Name != e.Patch || h.Size != e.PatchSize {
			return idx, fmt.Errorf("%w: entry %q of %d bytes where the index names %q of %d", ErrCorrupt, h.Name, h.Size, e.Patch, e.PatchSize)
		}
		if err := write(out, e, func(w io.Writer) error {
			info, err := layerdelta.Apply(ctx, bases, tr, w)
			if err != nil {
				return patchErr(err)
			}
			if info.Target.String() != e.DiffID {
				return fmt.Errorf("%w: the patch rebuilds %s", ErrMismatch, info.Target)
			}
			if n, _ := io.Copy(io.Discard, tr); n > 0 {
				return fmt.Errorf("%w: %d bytes after the patch", ErrCorrupt, n)
			}
			return nil
		}); err != nil {
			return idx, fmt.Errorf("layer %d (%s): %w", i, e.DiffID, err)
		}
	}
	if h, err := tr.Next(); err != io.EOF {
		if err != nil {
			return idx, tarErr(err, "end")
		}
		return idx, fmt.Errorf("%w: unexpected entry %q after the last patch", ErrCorrupt, h.Name)
	}
	return idx, nil
}

// write runs fill into out's writer for e (or into nothing when out skips
// it), checking the sha256 of what it wrote.
func write(out Out, e IndexEntry, fill func(io.Writer) error) error {
	wc, err := out(e)
	if err != nil {
		return err
	}
	var w io.Writer = io.Discard
	if wc != nil {
		w = wc
	}
	h := sha256.New()
	err = fill(io.MultiWriter(w, h))
	if err == nil && "sha256:"+hex.EncodeToString(h.Sum(nil)) != e.DiffID {
		err = fmt.Errorf("%w: rebuilt sha256:%x", ErrMismatch, h.Sum(nil))
	}
	if wc == nil {
		return err
	}
	if err != nil {
		if ce, ok := wc.(interface{ CloseWithError(error) error }); ok {
			ce.CloseWithError(err)
		}
		return err
	}
	return wc.Close()
}

func tarErr(err error, what string) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %s", ErrTruncated, what)
	}
	return fmt.Errorf("%w: %s: %w", ErrCorrupt, what, err)
}

// patchErr maps a layerdelta error onto this package's sentinels, keeping it.
func patchErr(err error) error {
	switch {
	case errors.Is(err, layerdelta.ErrTruncated), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("%w: %w", ErrTruncated, err)
	case errors.Is(err, layerdelta.ErrMismatch):
		return fmt.Errorf("%w: %w", ErrMismatch, err)
	case errors.Is(err, layerdelta.ErrWrongBase):
		return fmt.Errorf("%w: %w", ErrMissingBase, err)
	case errors.Is(err, layerdelta.ErrVersion):
		return fmt.Errorf("%w: %w", ErrVersion, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return fmt.Errorf("%w: %w", ErrCorrupt, err)
}
