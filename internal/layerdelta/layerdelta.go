// Package layerdelta computes and applies tar-aware deltas between container
// image layers (issue 14, "Format").
//
// A delta turns an image's old layers (uncompressed tars, in order, later
// layers shadowing earlier ones, with OCI whiteouts) into a new layer's
// uncompressed tar, byte for byte:
//
//   - every byte of the new tar that is not regular-file content (headers,
//     PAX and GNU long-name records, padding, end-of-archive blocks, trailing
//     zeros, and the content of anything this package does not look into,
//     such as sparse files) is copied verbatim into the patch;
//   - a file whose content is found anywhere in the old layers (same path, or
//     the same sha256 under any path, even in a shadowed or whited-out entry)
//     costs a reference: layer, offset, size;
//   - a file that exists in the old image under the same path with different
//     content is encoded with zstd in patch-from mode, its old version as a raw
//     dictionary;
//   - anything else (a new file) is stored as is.
//
// All of this is carried in one zstd stream, so headers and new files are
// compressed, with the preceding ones as context.
//
// Wire format (version 1), all integers big-endian:
//
//	magic   "FLKLDLT" + version byte (1)
//	[32]    target diffID (sha256 of the new uncompressed tar)
//	uint64  target size
//	uint32  number of base layers N
//	N ×     [32] base diffID, uint64 base size
//	body    chunks: uint32 length + bytes, ended by a zero length; the chunks
//	        concatenated are one zstd stream of ops (see op* constants)
//	[32]    sha256 of every preceding byte of the patch
//
// Apply refuses a patch whose magic, version or checksum is wrong, a truncated
// patch, base layers whose diffIDs differ from those the patch was made
// against, and a result whose sha256 differs from the target diffID. Apply
// streams: when it returns an error, whatever it wrote to w must be discarded.
//
// bsdiff is not used: no Go bsdiff module is served to this build (the
// module proxy refuses github.com/gabstv/go-bsdiff). The op code opBsdiff is
// reserved so that a later version can add it next to zstd patch-from and
// pick the smaller per file.
package layerdelta

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// Version is the patch format version written by Diff and accepted by Apply.
const Version = 1

var magic = [7]byte{'F', 'L', 'K', 'L', 'D', 'L', 'T'}

// Ops inside the body's zstd stream. Each op is one byte followed by uvarints
// (and bytes where said).
const (
	opEnd    = 0 // end of body
	opMeta   = 1 // n, n bytes copied verbatim (non-content bytes of the tar)
	opRef    = 2 // layer, offset, size: copy size bytes of base layer at offset
	opRaw    = 3 // n, n bytes of new file content
	opZPatch = 4 // layer, offset, baseSize, newSize, n, n bytes: a zstd frame decoded with the base range as raw dictionary
	opBsdiff = 5 // reserved
)

const (
	chunkSize = 64 << 10
	// maxFileInMemory bounds the content of one file Diff holds (and the
	// base + new pair for a patch). Larger changed or new files are stored
	// as raw content, streamed.
	defaultMaxPatchFile = 256 << 20
	maxChunk            = 1 << 20
	// maxDict bounds the body's dictionary (the old layers' last tar
	// headers), and with it the body's zstd window (at most 32 MiB).
	maxDict = 8 << 20
)

// Layer is one uncompressed tar layer.
type Layer struct {
	R    io.ReaderAt
	Size int64
}

// Digest is a sha256 digest.
type Digest [32]byte

// String renders d as "sha256:<hex>".
func (d Digest) String() string { return "sha256:" + hex.EncodeToString(d[:]) }

// Options tune Diff. The zero value is usable.
type Options struct {
	// MaxPatchFile is the largest file (old or new version) that Diff holds
	// in memory to patch; larger ones are stored whole. Zero means 256 MiB.
	MaxPatchFile int64
	// Level is the zstd level of the body and of per-file patches. Zero
	// means zstd.SpeedBestCompression.
	Level zstd.EncoderLevel
}

// Stats describes a patch written by Diff.
type Stats struct {
	Target     Digest // diffID of the new layer
	TargetSize int64
	PatchSize  int64

	Files        int   // regular files with content in the new layer
	RefFiles     int   // found in the old layers: reference only
	RefBytes     int64 // their content size
	PatchedFiles int   // patched against the old version with zstd patch-from
	PatchedBytes int64 // their new content size
	PatchBytes   int64 // size of those zstd patches
	RawFiles     int   // stored whole (new files, or too large to patch)
	RawBytes     int64
	MetaBytes    int64 // non-content bytes of the tar, copied verbatim
}

// Sentinel errors; Apply's errors wrap one of them.
var (
	ErrCorrupt    = errors.New("layerdelta: corrupt patch")
	ErrTruncated  = errors.New("layerdelta: truncated patch")
	ErrVersion    = errors.New("layerdelta: unsupported patch version")
	ErrWrongBase  = errors.New("layerdelta: patch does not apply to these base layers")
	ErrMismatch   = errors.New("layerdelta: rebuilt layer does not match the target diffID")
	ErrTarUnsound = errors.New("layerdelta: new layer is not a tar this package can split")
)

// ---------------------------------------------------------------- indexing

type fileRef struct {
	layer  int
	offset int64
	size   int64
	sum    Digest
}

type baseIndex struct {
	layers  []Digest
	sizes   []int64
	visible map[string]fileRef // path → content of the file the old image shows there
	byHash  map[Digest]fileRef // any content present in any old layer
	readers []io.ReaderAt
	dict    []byte // raw dictionary of the body's zstd stream
}

// bodyWindow is the body stream's zstd window: it reaches back over the
// dictionary and some of the body.
func bodyWindow(dictLen int) int { return windowFor(dictLen, 8<<20) }

// countReader counts bytes read and hashes them.
type countReader struct {
	r io.Reader
	n int64
	h hash.Hash
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.h != nil {
		c.h.Write(p[:n])
	}
	return n, err
}

func cleanName(name string) string {
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	return name
}

func isSparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

func isRegular(h *tar.Header) bool {
	return (h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeRegA) && !isSparse(h)
}

// indexBase reads every old layer once: its diffID, the offset, size and
// sha256 of every regular file's content, and the dictionary of the body's
// zstd stream: the old layers' non-content bytes (tar headers mostly), the
// last maxDict of them. Diff and Apply both build it, the same way.
func indexBase(ctx context.Context, old []Layer) (*baseIndex, error) {
	ix := &baseIndex{visible: map[string]fileRef{}, byHash: map[Digest]fileRef{}}
	var dict []byte
	for li, l := range old {
		sp := &splitter{r: bufio.NewReaderSize(io.NewSectionReader(l.R, 0, l.Size), 1<<16), h: sha256.New()}
		sp.meta.Write(dict)
		dict = nil
		tr := tar.NewReader(sp)
		for {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if sp.meta.Len() > 2*maxDict {
				b := sp.meta.Bytes()
				keep := append([]byte(nil), b[len(b)-maxDict:]...)
				sp.meta.Reset()
				sp.meta.Write(keep)
			}
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("layerdelta: base layer %d: %w", li, err)
			}
			name := cleanName(h.Name)
			dir, base := path.Split(name)
			dir = strings.TrimSuffix(dir, "/")
			switch {
			case base == ".wh..wh..opq":
				ix.removeUnder(dir, li, false)
				continue
			case strings.HasPrefix(base, ".wh."):
				ix.removeUnder(path.Join(dir, strings.TrimPrefix(base, ".wh.")), li, true)
				continue
			}
			switch {
			case isRegular(h) && h.Size > 0:
				off := sp.n
				fh := sha256.New()
				sp.content = true
				n, err := io.Copy(fh, tr)
				sp.content = false
				if err != nil {
					return nil, fmt.Errorf("layerdelta: base layer %d: %s: %w", li, h.Name, err)
				}
				if sp.n-off != n {
					return nil, fmt.Errorf("layerdelta: base layer %d: %s: content of %d bytes took %d bytes of the stream", li, h.Name, n, sp.n-off)
				}
				ref := fileRef{layer: li, offset: off, size: n}
				fh.Sum(ref.sum[:0])
				ix.visible[name] = ref
				if _, ok := ix.byHash[ref.sum]; !ok {
					ix.byHash[ref.sum] = ref
				}
			case isRegular(h):
				ix.visible[name] = fileRef{layer: li, offset: sp.n, sum: sha256.Sum256(nil)}
			case h.Typeflag == tar.TypeLink:
				if ref, ok := ix.visible[cleanName(h.Linkname)]; ok {
					ix.visible[name] = ref
				} else {
					delete(ix.visible, name)
				}
			default:
				delete(ix.visible, name)
			}
		}
		// The rest (end-of-archive blocks, record padding) counts in the diffID.
		if _, err := io.Copy(io.Discard, sp); err != nil {
			return nil, fmt.Errorf("layerdelta: base layer %d: %w", li, err)
		}
		if sp.n != l.Size {
			return nil, fmt.Errorf("layerdelta: base layer %d: read %d bytes, size says %d", li, sp.n, l.Size)
		}
		dict = sp.meta.Bytes()
		if len(dict) > maxDict {
			dict = dict[len(dict)-maxDict:]
		}
		var d Digest
		sp.h.Sum(d[:0])
		ix.layers = append(ix.layers, d)
		ix.sizes = append(ix.sizes, l.Size)
		ix.readers = append(ix.readers, l.R)
	}
	ix.dict = dict
	return ix, nil
}

// removeUnder applies a whiteout from layer li: entries of lower layers at p
// (if self) and below p disappear.
func (ix *baseIndex) removeUnder(p string, li int, self bool) {
	prefix := p + "/"
	if p == "" || p == "." {
		prefix = ""
	}
	for k, v := range ix.visible {
		if v.layer >= li {
			continue
		}
		if (self && k == p) || strings.HasPrefix(k, prefix) {
			delete(ix.visible, k)
		}
	}
}

// ---------------------------------------------------------------- writing

// chunkWriter frames the body as length-prefixed chunks.
type chunkWriter struct {
	w   io.Writer
	buf []byte
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		k := min(chunkSize-len(c.buf), len(p))
		c.buf = append(c.buf, p[:k]...)
		p = p[k:]
		if len(c.buf) == chunkSize {
			if err := c.flush(); err != nil {
				return 0, err
			}
		}
	}
	return n, nil
}

func (c *chunkWriter) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	var l [4]byte
	binary.BigEndian.PutUint32(l[:], uint32(len(c.buf)))
	if _, err := c.w.Write(l[:]); err != nil {
		return err
	}
	_, err := c.w.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

func (c *chunkWriter) close() error {
	if err := c.flush(); err != nil {
		return err
	}
	_, err := c.w.Write([]byte{0, 0, 0, 0})
	return err
}

type opWriter struct {
	z   *zstd.Encoder
	tmp []byte
}

func (o *opWriter) op(code byte, vals ...uint64) error {
	o.tmp = append(o.tmp[:0], code)
	for _, v := range vals {
		o.tmp = binary.AppendUvarint(o.tmp, v)
	}
	_, err := o.z.Write(o.tmp)
	return err
}

// splitter sits between the new tar stream and tar.Reader: bytes read while
// not in content mode are the tar's non-content bytes and are collected in
// meta; in content mode they are counted only.
type splitter struct {
	r       io.Reader
	h       hash.Hash
	n       int64
	content bool
	meta    bytes.Buffer
}

func (s *splitter) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	s.h.Write(p[:n])
	if !s.content {
		s.meta.Write(p[:n])
	}
	return n, err
}

// Diff writes to w a patch that rebuilds the uncompressed tar read from
// newLayer out of the old layers (in order, lowest first). opts may be nil.
//
// Diff holds at most one file's new content, plus its old version when it
// patches it, in memory (bounded by Options.MaxPatchFile), plus the index of
// the old layers' files.
func Diff(ctx context.Context, old []Layer, newLayer io.Reader, w io.Writer, opts *Options) (Stats, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.MaxPatchFile <= 0 {
		o.MaxPatchFile = defaultMaxPatchFile
	}
	if o.Level == 0 {
		o.Level = zstd.SpeedBestCompression
	}
	var st Stats
	ix, err := indexBase(ctx, old)
	if err != nil {
		return st, err
	}

	// The header's target diffID and size are known only at the end, so the
	// body is held in memory until then. Patches are small by design; new
	// files make them larger (see Stats.RawBytes).
	var body bytes.Buffer
	cw := &chunkWriter{w: &body}
	zopts := []zstd.EOption{zstd.WithEncoderLevel(o.Level), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(bodyWindow(len(ix.dict)))}
	if len(ix.dict) > 0 {
		zopts = append(zopts, zstd.WithEncoderDictRaw(1, ix.dict))
	}
	z, err := zstd.NewWriter(cw, zopts...)
	if err != nil {
		return st, err
	}
	ow := &opWriter{z: z}

	sp := &splitter{r: bufio.NewReaderSize(newLayer, 1<<16), h: sha256.New()}
	tr := tar.NewReader(sp)
	flushMeta := func() error {
		if sp.meta.Len() == 0 {
			return nil
		}
		st.MetaBytes += int64(sp.meta.Len())
		if err := ow.op(opMeta, uint64(sp.meta.Len())); err != nil {
			return err
		}
		_, err := z.Write(sp.meta.Bytes())
		sp.meta.Reset()
		return err
	}
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, fmt.Errorf("%w: %v", ErrTarUnsound, err)
		}
		if !isRegular(h) || h.Size == 0 {
			continue // its bytes, if any, go through as meta
		}
		if err := flushMeta(); err != nil {
			return st, err
		}
		sp.content = true
		start := sp.n
		if err := diffFile(ix, &o, ow, tr, h, &st); err != nil {
			return st, err
		}
		sp.content = false
		if sp.n-start != h.Size {
			return st, fmt.Errorf("%w: %s: content of %d bytes took %d bytes of the stream", ErrTarUnsound, h.Name, h.Size, sp.n-start)
		}
	}
	if _, err := io.Copy(io.Discard, sp); err != nil {
		return st, err
	}
	if err := flushMeta(); err != nil {
		return st, err
	}
	if err := ow.op(opEnd); err != nil {
		return st, err
	}
	if err := z.Close(); err != nil {
		return st, err
	}
	if err := cw.close(); err != nil {
		return st, err
	}
	sp.h.Sum(st.Target[:0])
	st.TargetSize = sp.n

	ph := sha256.New()
	mw := io.MultiWriter(w, ph)
	var hdr []byte
	hdr = append(hdr, magic[:]...)
	hdr = append(hdr, Version)
	hdr = append(hdr, st.Target[:]...)
	hdr = binary.BigEndian.AppendUint64(hdr, uint64(st.TargetSize))
	hdr = binary.BigEndian.AppendUint32(hdr, uint32(len(ix.layers)))
	for i, d := range ix.layers {
		hdr = append(hdr, d[:]...)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(ix.sizes[i]))
	}
	if _, err := mw.Write(hdr); err != nil {
		return st, err
	}
	if _, err := mw.Write(body.Bytes()); err != nil {
		return st, err
	}
	if _, err := w.Write(ph.Sum(nil)); err != nil {
		return st, err
	}
	st.PatchSize = int64(len(hdr)) + int64(body.Len()) + sha256.Size
	return st, nil
}

// diffFile encodes one regular file's content, read from tr.
func diffFile(ix *baseIndex, o *Options, ow *opWriter, tr io.Reader, h *tar.Header, st *Stats) error {
	st.Files++
	if h.Size > o.MaxPatchFile {
		// Too large to hold: stream it whole. (A reference by hash would need
		// a second pass; a same-path, same-size file is checked cheaply.)
		st.RawFiles++
		st.RawBytes += h.Size
		if err := ow.op(opRaw, uint64(h.Size)); err != nil {
			return err
		}
		_, err := io.CopyN(ow.z, tr, h.Size)
		return err
	}
	data := make([]byte, h.Size)
	if _, err := io.ReadFull(tr, data); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrTarUnsound, h.Name, err)
	}
	sum := Digest(sha256.Sum256(data))
	name := cleanName(h.Name)
	prev, hasPrev := ix.visible[name]
	if hasPrev && prev.sum == sum {
		return ref(ow, prev, st)
	}
	if r, ok := ix.byHash[sum]; ok {
		return ref(ow, r, st)
	}
	if hasPrev && prev.size > 0 && prev.size <= o.MaxPatchFile {
		base := make([]byte, prev.size)
		if _, err := io.ReadFull(io.NewSectionReader(ix.reader(prev.layer), prev.offset, prev.size), base); err != nil {
			return err
		}
		p, err := zPatch(base, data, o.Level)
		if err != nil {
			return err
		}
		if len(p) < len(data) {
			st.PatchedFiles++
			st.PatchedBytes += h.Size
			st.PatchBytes += int64(len(p))
			if err := ow.op(opZPatch, uint64(prev.layer), uint64(prev.offset), uint64(prev.size), uint64(len(data)), uint64(len(p))); err != nil {
				return err
			}
			_, err = ow.z.Write(p)
			return err
		}
	}
	st.RawFiles++
	st.RawBytes += h.Size
	if err := ow.op(opRaw, uint64(len(data))); err != nil {
		return err
	}
	_, err := ow.z.Write(data)
	return err
}

func ref(ow *opWriter, r fileRef, st *Stats) error {
	st.RefFiles++
	st.RefBytes += r.size
	return ow.op(opRef, uint64(r.layer), uint64(r.offset), uint64(r.size))
}

// windowFor returns a zstd window that reaches from the end of data back to
// the start of a dictionary of dictLen bytes.
func windowFor(dictLen, dataLen int) int {
	w := zstd.MinWindowSize
	for w < dictLen+dataLen && w < zstd.MaxWindowSize {
		w <<= 1
	}
	return w
}

func zPatch(base, data []byte, level zstd.EncoderLevel) ([]byte, error) {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(level),
		zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(windowFor(len(base), len(data))),
		zstd.WithEncoderDictRaw(1, base),
		zstd.WithEncoderCRC(false), // the result is checked by the target diffID
		zstd.WithZeroFrames(true),
	)
	if err != nil {
		return nil, err
	}
	defer enc.Close()
	return enc.EncodeAll(data, nil), nil
}

// ---------------------------------------------------------------- applying

// reader returns old layer i, to read a base file for a patch.
func (ix *baseIndex) reader(i int) io.ReaderAt { return ix.readers[i] }

// Info describes a patch applied by Apply.
type Info struct {
	Target     Digest
	TargetSize int64
	Bases      []Digest // diffIDs of the old layers, lowest first
	baseSizes  []uint64
}

// chunkReader reads the body's chunks and stops at the zero-length one.
type chunkReader struct {
	r    io.Reader
	left int
	done bool
}

func (c *chunkReader) Read(p []byte) (int, error) {
	for c.left == 0 {
		if c.done {
			return 0, io.EOF
		}
		var l [4]byte
		if _, err := io.ReadFull(c.r, l[:]); err != nil {
			return 0, truncated(err)
		}
		n := binary.BigEndian.Uint32(l[:])
		if n == 0 {
			c.done = true
			return 0, io.EOF
		}
		if n > maxChunk {
			return 0, fmt.Errorf("%w: chunk of %d bytes", ErrCorrupt, n)
		}
		c.left = int(n)
	}
	p = p[:min(len(p), c.left)]
	n, err := c.r.Read(p)
	c.left -= n
	if err == io.EOF {
		if c.left > 0 {
			return n, ErrTruncated
		}
		err = nil
	}
	return n, truncated(err)
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return ErrTruncated
	}
	return err
}

// ReadInfo reads only the header of a patch (without checking its checksum,
// which covers the whole patch).
func ReadInfo(patch io.Reader) (Info, error) {
	return readHeader(patch)
}

func readHeader(r io.Reader) (Info, error) {
	var info Info
	var fixed [8 + 32 + 8 + 4]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return info, truncated(err)
	}
	if !bytes.Equal(fixed[:7], magic[:]) {
		return info, fmt.Errorf("%w: not a layer delta (bad magic)", ErrCorrupt)
	}
	if fixed[7] != Version {
		return info, fmt.Errorf("%w: %d (this build reads %d)", ErrVersion, fixed[7], Version)
	}
	copy(info.Target[:], fixed[8:40])
	ts := binary.BigEndian.Uint64(fixed[40:48])
	if ts > 1<<50 {
		return info, fmt.Errorf("%w: target size %d", ErrCorrupt, ts)
	}
	info.TargetSize = int64(ts)
	n := binary.BigEndian.Uint32(fixed[48:52])
	if n > 1<<12 {
		return info, fmt.Errorf("%w: %d base layers", ErrCorrupt, n)
	}
	for range n {
		var b [40]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return info, truncated(err)
		}
		info.Bases = append(info.Bases, Digest(b[:32]))
		info.baseSizes = append(info.baseSizes, binary.BigEndian.Uint64(b[32:]))
	}
	return info, nil
}

// Apply rebuilds the new layer's uncompressed tar from the old layers (the
// same, in the same order, as given to Diff) and patch, writing it to w.
//
// It checks the old layers' diffIDs against those the patch names before
// writing anything, and the patch's checksum and the result's diffID at the
// end. On any error the bytes written to w are not the target and must be
// discarded.
func Apply(ctx context.Context, old []Layer, patch io.Reader, w io.Writer) (Info, error) {
	ph := sha256.New()
	pr := io.TeeReader(bufio.NewReaderSize(patch, 1<<16), ph)
	info, err := readHeader(pr)
	if err != nil {
		return info, err
	}
	if len(info.Bases) != len(old) {
		return info, fmt.Errorf("%w: patch was made against %d layers, %d given", ErrWrongBase, len(info.Bases), len(old))
	}
	for i, l := range old {
		if uint64(l.Size) != info.baseSizes[i] {
			return info, fmt.Errorf("%w: layer %d has %d bytes, patch wants %d", ErrWrongBase, i, l.Size, info.baseSizes[i])
		}
	}
	ix, err := indexBase(ctx, old)
	if err != nil {
		return info, err
	}
	for i, d := range ix.layers {
		if d != info.Bases[i] {
			return info, fmt.Errorf("%w: layer %d is %s, patch wants %s", ErrWrongBase, i, d, info.Bases[i])
		}
	}

	zopts := []zstd.DOption{zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(uint64(bodyWindow(len(ix.dict))))}
	if len(ix.dict) > 0 {
		zopts = append(zopts, zstd.WithDecoderDictRaw(1, ix.dict))
	}
	zr, err := zstd.NewReader(&chunkReader{r: pr}, zopts...)
	if err != nil {
		return info, err
	}
	defer zr.Close()
	br := bufio.NewReader(zr)
	oh := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, oh), 1<<16)
	var written int64
	uv := func() (uint64, error) {
		v, err := binary.ReadUvarint(br)
		if err != nil {
			return 0, bodyErr(err)
		}
		return v, nil
	}
	section := func(layer, off, size uint64) (*io.SectionReader, error) {
		if layer >= uint64(len(old)) || off > uint64(old[layer].Size) || size > uint64(old[layer].Size)-off {
			return nil, fmt.Errorf("%w: reference outside base layer %d", ErrCorrupt, layer)
		}
		return io.NewSectionReader(old[layer].R, int64(off), int64(size)), nil
	}
	for done := false; !done; {
		if err := ctx.Err(); err != nil {
			return info, err
		}
		code, err := br.ReadByte()
		if err != nil {
			return info, bodyErr(err)
		}
		switch code {
		case opEnd:
			done = true
		case opMeta, opRaw:
			n, err := uv()
			if err != nil {
				return info, err
			}
			if n > uint64(info.TargetSize)-uint64(written) {
				return info, fmt.Errorf("%w: op longer than the target", ErrCorrupt)
			}
			if _, err := io.CopyN(bw, br, int64(n)); err != nil {
				return info, bodyErr(err)
			}
			written += int64(n)
		case opRef:
			var v [3]uint64
			for i := range v {
				if v[i], err = uv(); err != nil {
					return info, err
				}
			}
			s, err := section(v[0], v[1], v[2])
			if err != nil {
				return info, err
			}
			if _, err := io.Copy(bw, s); err != nil {
				return info, err
			}
			written += int64(v[2])
		case opZPatch:
			var v [5]uint64
			for i := range v {
				if v[i], err = uv(); err != nil {
					return info, err
				}
			}
			s, err := section(v[0], v[1], v[2])
			if err != nil {
				return info, err
			}
			newSize, plen := v[3], v[4]
			if newSize > uint64(info.TargetSize)-uint64(written) || plen > uint64(info.TargetSize)+1<<20 {
				return info, fmt.Errorf("%w: patch op sizes", ErrCorrupt)
			}
			base := make([]byte, v[2])
			if _, err := s.ReadAt(base, 0); err != nil && !(err == io.EOF && len(base) == 0) {
				return info, err
			}
			p := make([]byte, plen)
			if _, err := io.ReadFull(br, p); err != nil {
				return info, bodyErr(err)
			}
			out, err := zUnpatch(base, p, int(newSize))
			if err != nil {
				return info, err
			}
			if _, err := bw.Write(out); err != nil {
				return info, err
			}
			written += int64(newSize)
		default:
			return info, fmt.Errorf("%w: unknown op %d", ErrCorrupt, code)
		}
	}
	// The zstd stream must end here, then the chunk terminator.
	if _, err := br.ReadByte(); err != io.EOF {
		if err == nil {
			return info, fmt.Errorf("%w: data after the end op", ErrCorrupt)
		}
		return info, bodyErr(err)
	}
	sum := ph.Sum(nil)
	var trailer [32]byte
	if _, err := io.ReadFull(pr, trailer[:]); err != nil {
		return info, truncated(err)
	}
	if !bytes.Equal(sum, trailer[:]) {
		return info, fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	if err := bw.Flush(); err != nil {
		return info, err
	}
	if written != info.TargetSize {
		return info, fmt.Errorf("%w: rebuilt %d bytes, target has %d", ErrMismatch, written, info.TargetSize)
	}
	if d := Digest(oh.Sum(nil)); d != info.Target {
		return info, fmt.Errorf("%w: rebuilt %s, target %s", ErrMismatch, d, info.Target)
	}
	return info, nil
}

func bodyErr(err error) error {
	if errors.Is(err, ErrTruncated) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return ErrTruncated
	}
	if errors.Is(err, ErrCorrupt) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrCorrupt, err)
}

func zUnpatch(base, p []byte, newSize int) ([]byte, error) {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderDictRaw(1, base),
		zstd.WithDecoderMaxWindow(uint64(max(windowFor(len(base), newSize), zstd.MinWindowSize))),
		zstd.WithDecodeAllCapLimit(true),
	)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	out, err := d.DecodeAll(p, make([]byte, 0, newSize))
	if err != nil {
		return nil, fmt.Errorf("%w: file patch: %v", ErrCorrupt, err)
	}
	if len(out) != newSize {
		return nil, fmt.Errorf("%w: file patch gave %d bytes, want %d", ErrCorrupt, len(out), newSize)
	}
	return out, nil
}
