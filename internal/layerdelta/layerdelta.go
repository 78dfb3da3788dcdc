// Package layerdelta computes and applies tar-aware deltas between container
// image layers (issue 14, "Format").
//
// A delta turns an image's old layers (uncompressed tars, in order, later
// layers shadowing earlier ones, with OCI whiteouts) into a new layer's
// uncompressed tar, byte for byte. The new tar is split in two:
//
//   - its non-content bytes (headers, PAX and GNU long-name records, padding,
//     end-of-archive blocks, trailing zeros, and the data of anything this
//     package does not look into, such as sparse files) form the header
//     stream, encoded in chunks of up to 8 MiB against the old layers' own
//     non-content bytes the way content groups are (below), so that
//     unchanged headers cost next to nothing and a header whose size or
//     checksum changed costs a few difference bytes;
//   - the content of each regular file is one op in the op stream: a
//     reference to a file of the old layers with the same content (same path,
//     or the same sha256 under any path, even a shadowed or whited-out one),
//     encoded as a step from the previous reference so that runs of unchanged
//     files compress to almost nothing; or a place in a content group; or,
//     for a file over Options.MaxPatchFile, the content itself.
//
// A content group holds the new content of consecutive changed and new
// files (tar order; other files' references may come between them), up to
// Options.MaxGroup old and new bytes. Its base is the concatenation of the
// old versions of its files: for a changed file the old file at its path,
// for a new file an old file likely to share content (same base name; or
// same directory and extension and a name that starts or ends the same
// way; or same extension and a similar size), for others nothing. The
// group's new content is encoded against its base the way bsdiff encodes a
// file (approximate matches, whose byte-wise differences compress to almost
// nothing, and new bytes; see gdiff.go), in three streams (controls,
// difference bytes, extra bytes) each compressed with zstd or bzip2,
// whichever is smaller. One encoding for the whole group, rather than a
// patch per file, lets the compressors see what files have in common (the
// same inserted line in many sources, the same change in two bundles of
// the same code) and pays headers and entropy tables once.
//
// Apply rebuilds the tar by running archive/tar over the header stream: each
// regular file's header says how long its content is, and the next op
// supplies it. Both sides decide "this entry's data is file content" with the
// same rule on the same header bytes (regular, not sparse, non-empty).
//
// Wire format (version 4), integers big-endian:
//
//	magic   "FLKLDLT" + version byte (4)
//	[32]    target diffID (sha256 of the new uncompressed tar)
//	uint64  target size
//	uint32  number of base layers N
//	N ×     [32] base diffID, uint64 base size
//	uint64  length, then the header stream: chunks, each its raw length
//	        (a uvarint, at most 8 MiB) and three streams as in opGroup,
//	        then a zero length
//	uint64  length, then the op stream (one zstd frame)
//	[32]    sha256 of every preceding byte of the patch
//
// Ops (a byte, then uvarints): opRef step; opGroup n, n base steps, new
// length, then three streams (a method byte, 0 zstd or 1 bzip2, the raw
// length, the compressed length, the compressed bytes); opGrouped (the
// file's content is the next bytes of the open group's content); opRaw,
// then the file's content; opEnd. A group comes just before the op of its
// first file, and its content must be used up by its files. A step is the
// zigzag-encoded difference between an old file's ordinal (its position
// among the non-empty regular files of the old layers, lowest layer first)
// and the previous step's ordinal plus one; references and group bases are
// two separate chains. A control is three uvarints: bytes to add to the
// base at the current position (from the difference stream), bytes to copy
// from the extra stream, and the zigzag-encoded move of the base position.
// Version 3, which Apply still reads, differs only in its header stream:
// one zstd frame with the old non-content bytes as a raw dictionary (3.0
// against 0.7 KiB on the npm pair's 6.6 MB of headers). Versions 1 and 2 (a
// zstd or bsdiff patch per file) are not read: none was ever stored.
//
// Apply refuses a patch whose magic, version or checksum is wrong, a truncated
// patch, base layers whose diffIDs differ from those the patch was made
// against, and a result whose sha256 differs from the target diffID; every
// length and position in a group is checked against its buffers. Apply
// streams its output: when it returns an error, whatever it wrote to w must be
// discarded; it never writes more than the target size the patch states.
// It holds the compressed header stream, the old layers' last 8 MiB of
// non-content bytes, and one group's base and compressed streams at a
// time: a group's content is decoded as its files are written.
//
// Memory on Diff's side: the index of the old layers' files, the compressed
// patch (written at the end, when the target diffID is known), one group's
// base and new content (at most Options.MaxGroup, or one file's two
// versions when larger; files over Options.MaxPatchFile are streamed
// whole, even when unchanged: a known gap), the group matcher's hash table
// (at most 4 MiB) and chain (2 bytes a byte of base; a quarter byte for
// the header stream's, see metaStride), two zstd encoders (the op
// stream's and the groups' streams') and a bzip2 writer, one chunk of the
// new layer's non-content bytes (up to 8 MiB, compressed until it is
// encoded) and the old layers' last 8 MiB of them (read back from the old
// layers once they are indexed, so held once).
// bench/deltas measures it.
package layerdelta

import (
	"archive/tar"
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// Version is the patch format version written by Diff. Apply reads it and
// version 3 (whose header stream is one zstd frame).
const Version = 4

var magic = [7]byte{'F', 'L', 'K', 'L', 'D', 'L', 'T'}

const (
	opEnd     = 0
	opRef     = 1
	opRaw     = 3
	opGroup   = 5
	opGrouped = 6
)

const (
	// defaultMaxPatchFile bounds the content of one file Diff holds in
	// memory (and the old+new pair it patches). Larger files are stored
	// whole, streamed.
	defaultMaxPatchFile = 256 << 20
	// opsWindow is the op stream's zstd window, groupStreamWindow that of
	// the groups' streams (controls, difference and extra bytes).
	opsWindow         = 1 << 20
	groupStreamWindow = 2 << 20
	// defaultMaxGroup bounds a content group's old and new bytes (unless
	// one file's versions are larger).
	defaultMaxGroup = 16 << 20
	// maxDict bounds the header stream's base (the old layers' last
	// non-content bytes; in version 3, the zstd dictionary).
	maxDict = 8 << 20
	// maxMetaSection bounds the compressed header stream Apply holds.
	maxMetaSection = 256 << 20
	// metaChunk bounds one chunk of the header stream: Diff holds one
	// chunk of non-content bytes before encoding it, Apply one decoded.
	// Chunks of the npm pair's 6.6 MB of headers: 1 MiB 1.2 KiB in all,
	// 4 MiB 0.8 KiB, one chunk 0.7 KiB (each chunk pays for its streams'
	// framing and entropy tables).
	metaChunk = 8 << 20
	// binarySniff is how much of a file's start Diff looks at for a NUL
	// byte to call it binary (a group mostly of binaries is matched with
	// bsdiff's slack, see slackBinary).
	binarySniff = 8 << 10
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
	// in memory to look up or patch; larger ones are stored whole. Zero means
	// 256 MiB.
	MaxPatchFile int64
	// Level is the zstd level of the content groups' streams. Zero means
	// zstd.SpeedBetterCompression (SpeedDefault made the Go source pair's
	// groups 10% larger).
	Level zstd.EncoderLevel
	// StreamLevel is the zstd level of the op stream (references, and the
	// groups' streams, compressed already). Zero means zstd.SpeedDefault:
	// against SpeedBetterCompression it holds 3 MiB less of tables for 0.1
	// KiB more on the npm pair. (The header stream is encoded like the
	// groups, with Level.)
	StreamLevel zstd.EncoderLevel
	// MaxBsdiffFile and BsdiffText are ignored since format version 3:
	// every group is encoded bsdiff-style (see gdiff.go).
	MaxBsdiffFile int64
	BsdiffText    bool
	// NoDict turns off bases for new files (a file with no old version of
	// its path joins its group with no old file in the group's base).
	NoDict bool
	// MaxGroup bounds the old and new bytes of one content group (a group
	// holding a single file may be larger). Diff and Apply hold one group in
	// memory. Zero means 16 MiB.
	MaxGroup int64
}

// Stats describes a patch written by Diff.
type Stats struct {
	Target     Digest // diffID of the new layer
	TargetSize int64
	PatchSize  int64

	Files        int   // regular files with content in the new layer
	RefFiles     int   // found in the old layers: reference only
	RefBytes     int64 // their content size
	PatchedFiles int   // in a content group with an old file as base
	PatchedBytes int64 // their new content size
	PatchBytes   int64 // size of the content groups' streams and the bsdiff patches
	BsdiffFiles  int   // always 0 since format version 3
	BsdiffTried  int   // always 0 since format version 3
	DictFiles    int   // of PatchedFiles, new files with an old file of another path as base
	DictBytes    int64 // their new content size
	RawFiles     int   // content without an old base (new files in a group, or too large to hold)
	RawBytes     int64
	MetaBytes    int64 // non-content bytes of the tar
	MetaSize     int64 // their compressed size in the patch
	OpsSize      int64 // compressed size of the op stream
	Groups       int   // content groups (zstd streams) in the op stream
}

// Sentinel errors; Diff's and Apply's errors wrap one of them where they
// apply.
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
	ord    int // position in baseIndex.files; -1 for an empty file
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
	files   []fileRef          // every non-empty regular file of the old layers, in order
	readers []io.ReaderAt
	dict    []byte // raw dictionary of the body's zstd stream
}

// metaWindow is a version 3 header stream's zstd window: it reaches back
// over the dictionary and as much of the stream again.
func metaWindow(dictLen int) int { return windowFor(dictLen, max(dictLen, 1<<20)) }

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
// sha256 of every regular file's content, and the dictionary of the header
// stream: the old layers' non-content bytes (tar headers mostly), the
// last maxDict of them. Diff and Apply both build it, the same way.
func indexBase(ctx context.Context, old []Layer) (*baseIndex, error) {
	ix := &baseIndex{visible: map[string]fileRef{}, byHash: map[Digest]fileRef{}}
	meta := &tail{max: maxDict}
	copyBuf := make([]byte, 32<<10)
	for li, l := range old {
		sp := &splitter{r: bufio.NewReaderSize(io.NewSectionReader(l.R, 0, l.Size), 1<<16), h: sha256.New(),
			keep: func(off int64, p []byte) error { meta.add(li, off, len(p)); return nil }}
		tr := tar.NewReader(sp)
		for {
			if err := ctx.Err(); err != nil {
				return nil, err
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
				n, err := io.CopyBuffer(fh, tr, copyBuf) // io.Copy would allocate 32 KiB a file
				sp.content = false
				if err != nil {
					return nil, fmt.Errorf("layerdelta: base layer %d: %s: %w", li, h.Name, err)
				}
				if sp.n-off != n {
					return nil, fmt.Errorf("layerdelta: base layer %d: %s: content of %d bytes took %d bytes of the stream", li, h.Name, n, sp.n-off)
				}
				ref := fileRef{ord: len(ix.files), layer: li, offset: off, size: n}
				fh.Sum(ref.sum[:0])
				ix.files = append(ix.files, ref)
				ix.visible[name] = ref
				if _, ok := ix.byHash[ref.sum]; !ok {
					ix.byHash[ref.sum] = ref
				}
			case isRegular(h):
				ix.visible[name] = fileRef{ord: -1, layer: li, offset: sp.n, sum: sha256.Sum256(nil)}
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
		var d Digest
		sp.h.Sum(d[:0])
		ix.layers = append(ix.layers, d)
		ix.sizes = append(ix.sizes, l.Size)
		ix.readers = append(ix.readers, l.R)
	}
	dict, err := meta.read(ix.readers)
	if err != nil {
		return nil, err
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

// splitter sits between a tar stream and tar.Reader: it hashes and counts
// everything, and hands keep the bytes read while not in content mode.
type splitter struct {
	r       io.Reader
	h       hash.Hash
	n       int64
	content bool
	keep    func(off int64, p []byte) error // off: p's position in the stream
	keepErr error
}

func (s *splitter) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	s.h.Write(p[:n])
	if !s.content {
		if kerr := s.keep(s.n-int64(n), p[:n]); kerr != nil {
			s.keepErr = kerr
			return n, kerr
		}
	}
	return n, err
}

// tail keeps where the last max non-content bytes of the old layers are,
// as spans of the layers, and reads them back once indexBase is done: the
// bytes are held once, in one exact buffer, rather than gathered as they
// pass and copied into one at the end (which held them twice).
type tail struct {
	max   int
	spans []span // spans[head:] cover the last n bytes seen
	head  int
	n     int
}

type span struct {
	layer int
	off   int64
	len   int
}

func (t *tail) add(layer int, off int64, n int) {
	if n == 0 {
		return
	}
	if k := len(t.spans); k > t.head && t.spans[k-1].layer == layer && t.spans[k-1].off+int64(t.spans[k-1].len) == off {
		t.spans[k-1].len += n
	} else {
		t.spans = append(t.spans, span{layer, off, n})
	}
	t.n += n
	for t.n-t.spans[t.head].len >= t.max {
		t.n -= t.spans[t.head].len
		t.head++
	}
	if t.head > 1024 && t.head > len(t.spans)/2 {
		t.spans = t.spans[:copy(t.spans, t.spans[t.head:])]
		t.head = 0
	}
}

// read returns the last max bytes seen, in one exact slice.
func (t *tail) read(readers []io.ReaderAt) ([]byte, error) {
	out := make([]byte, min(t.n, t.max))
	skip, at := t.n-len(out), 0
	for _, s := range t.spans[t.head:] {
		off, n := s.off, s.len
		if skip > 0 {
			k := min(skip, n)
			skip -= k
			off, n = off+int64(k), n-k
		}
		if n == 0 {
			continue
		}
		if _, err := io.ReadFull(io.NewSectionReader(readers[s.layer], off, int64(n)), out[at:at+n]); err != nil {
			return nil, fmt.Errorf("layerdelta: base layer %d: headers at %d: %w", s.layer, off, err)
		}
		at += n
	}
	return out, nil
}

// chunker hands spill the bytes written to it in chunks of metaChunk (the
// last one shorter, on flush). Until a chunk is complete it keeps it
// compressed (zstd, fastest, a small window: tar headers shrink about
// tenfold), so that the content groups diffed meanwhile do not share memory
// with up to 8 MiB of pending headers.
type chunker struct {
	spill func([]byte) error
	n     int // bytes in the pending chunk
	comp  bytes.Buffer
	enc   *zstd.Encoder
	dec   *zstd.Decoder
	buf   []byte // what a chunk is decompressed into, reused
}

const chunkerWindow = 256 << 10

func (c *chunker) write(b []byte) error {
	for len(b) > 0 {
		if c.enc == nil {
			var err error
			c.enc, err = zstd.NewWriter(&c.comp, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
				zstd.WithWindowSize(chunkerWindow), zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false))
			if err != nil {
				return err
			}
		}
		k := min(len(b), metaChunk-c.n)
		if _, err := c.enc.Write(b[:k]); err != nil {
			return err
		}
		c.n += k
		b = b[k:]
		if c.n == metaChunk {
			if err := c.flush(); err != nil {
				return err
			}
		}
	}
	return nil
}

// flush spills what the chunk holds, decompressed into buf (or a buffer
// of its own when buf is too small).
func (c *chunker) flush() error {
	if c.n == 0 {
		return nil
	}
	if err := c.enc.Close(); err != nil {
		return err
	}
	if c.dec == nil {
		var err error
		if c.dec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(chunkerWindow)); err != nil {
			return err
		}
	}
	if cap(c.buf) < c.n {
		c.buf = make([]byte, 0, c.n)
	}
	out, err := c.dec.DecodeAll(c.comp.Bytes(), c.buf[:0])
	if err != nil || len(out) != c.n {
		return fmt.Errorf("layerdelta: pending headers: %d of %d bytes back: %v", len(out), c.n, err)
	}
	c.n = 0
	c.comp.Reset()
	c.enc.Reset(&c.comp)
	return c.spill(out)
}

// close releases the decoder.
func (c *chunker) close() {
	if c.dec != nil {
		c.dec.Close()
	}
}

type opWriter struct {
	z     *zstd.Encoder
	zs    *zstd.Encoder // the groups' streams
	bufs  gbufs
	names *nameIndex
	max   int // Options.MaxGroup
	tmp   []byte
	next  int // ordinal the next reference is expected at
	g     group
}

// group is the content stream being collected: the new content of its
// member files (in tar order) and the old files its dictionary
// concatenates. Its ops (the members', and any other file's between them)
// wait in pend until the stream is written, ahead of them.
type group struct {
	dict     []byte
	data     []byte
	bases    []int       // ordinals of the old files in dict, in order
	inDict   map[int]int // ordinal → offset in dict
	nextBase int         // base steps are a chain of their own
	pend     []byte
	files    int
	binBytes int64 // new bytes of members that look binary
}

// op writes one op: to the group's pending ops while a group is open, else
// straight to the op stream.
func (o *opWriter) op(code byte, vals ...uint64) error {
	o.tmp = append(o.tmp[:0], code)
	for _, v := range vals {
		o.tmp = binary.AppendUvarint(o.tmp, v)
	}
	return o.write(o.tmp)
}

func (o *opWriter) write(p []byte) error {
	if o.g.files > 0 {
		o.g.pend = append(o.g.pend, p...)
		return nil
	}
	_, err := o.z.Write(p)
	return err
}

func (o *opWriter) step(ord int) uint64 { return zigzag(ord, &o.next) }

func zigzag(ord int, next *int) uint64 {
	d := int64(ord - *next)
	*next = ord + 1
	return uint64(d<<1) ^ uint64(d>>63)
}

// flushGroup writes the open group's stream, made of the first dictLen
// bytes of its dictionary and dataLen bytes of its content, then its
// pending ops; it leaves bytes past those lengths in place (at the start
// of the buffers) for the next group.
func (o *opWriter) flushGroup(st *Stats, dictLen, dataLen int) error {
	g := &o.g
	if g.files == 0 {
		return nil
	}
	slack := slackText
	if g.binBytes*2 > int64(dataLen) {
		slack = slackBinary
	}
	ctrl, db, eb := gdiff(g.dict[:dictLen], g.data[:dataLen], slack, matchStride, &o.bufs)
	hdr := append(o.tmp[:0], opGroup)
	hdr = binary.AppendUvarint(hdr, uint64(len(g.bases)))
	for _, ord := range g.bases {
		hdr = binary.AppendUvarint(hdr, zigzag(ord, &g.nextBase))
	}
	hdr = binary.AppendUvarint(hdr, uint64(dataLen))
	n0 := len(hdr)
	var err error
	for _, raw := range [][]byte{ctrl, db, eb} {
		if hdr, err = packStream(hdr, raw, o.zs, &o.bufs); err != nil {
			return err
		}
	}
	o.tmp = hdr
	for _, p := range [][]byte{hdr, g.pend} {
		if _, err := o.z.Write(p); err != nil {
			return err
		}
	}
	st.Groups++
	st.PatchBytes += int64(len(hdr) - n0)
	n := copy(g.dict, g.dict[dictLen:])
	g.dict = g.dict[:n]
	n = copy(g.data, g.data[dataLen:])
	g.data = g.data[:n]
	g.bases = g.bases[:0]
	clear(g.inDict)
	g.pend = g.pend[:0]
	g.files, g.binBytes = 0, 0
	return nil
}

func newEncoder(w io.Writer, level zstd.EncoderLevel, window int, dict []byte) (*zstd.Encoder, error) {
	// Lower memory: the history buffer is the window plus one block, not
	// twice the window.
	opts := []zstd.EOption{zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(window), zstd.WithLowerEncoderMem(true)}
	if len(dict) > 0 {
		opts = append(opts, zstd.WithEncoderDictRaw(1, dict))
	}
	return zstd.NewWriter(w, opts...)
}

// Diff writes to w a patch that rebuilds the uncompressed tar read from
// newLayer out of the old layers (in order, lowest first). opts may be nil.
//
// Diff reads every old layer once, holds an index of their files, one
// content group (Options.MaxGroup, or one file's old and new version when
// they are larger) and the compressed patch until it is written at the end.
func Diff(ctx context.Context, old []Layer, newLayer io.Reader, w io.Writer, opts *Options) (Stats, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.MaxPatchFile <= 0 {
		o.MaxPatchFile = defaultMaxPatchFile
	}
	if o.StreamLevel == 0 {
		o.StreamLevel = zstd.SpeedDefault
	}
	if o.MaxGroup <= 0 {
		o.MaxGroup = defaultMaxGroup
	}
	var st Stats
	ix, err := indexBase(ctx, old)
	if err != nil {
		return st, err
	}

	var metaBuf, opsBuf bytes.Buffer
	// The op stream holds steps and the groups' already compressed
	// streams: a small window loses nothing.
	oz, err := newEncoder(&opsBuf, o.StreamLevel, opsWindow, nil)
	if err != nil {
		return st, err
	}
	if o.Level == 0 {
		o.Level = zstd.SpeedBetterCompression
	}
	zs, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(o.Level), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(groupStreamWindow),
		zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false), zstd.WithZeroFrames(true))
	if err != nil {
		return st, err
	}
	defer zs.Close()
	ow := &opWriter{z: oz, zs: zs, max: int(min(o.MaxGroup, 1<<40))}
	ow.g.inDict = map[int]int{}

	// The header stream is encoded a chunk at a time as the splitter
	// fills one.
	var metaTmp []byte
	meta := &chunker{spill: func(chunk []byte) error {
		st.MetaBytes += int64(len(chunk))
		var err error
		if metaTmp, err = encodeMeta(metaTmp[:0], ix.dict, chunk, ow); err != nil {
			return err
		}
		metaBuf.Write(metaTmp)
		return nil
	}}
	defer meta.close()
	sp := &splitter{r: bufio.NewReaderSize(newLayer, 1<<16), h: sha256.New(),
		keep: func(_ int64, p []byte) error { return meta.write(p) }}
	tr := tar.NewReader(sp)
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if sp.keepErr != nil {
			return st, sp.keepErr
		}
		if err != nil {
			return st, fmt.Errorf("%w: %v", ErrTarUnsound, err)
		}
		if !isRegular(h) || h.Size == 0 {
			continue // its data, if any, goes to the header stream
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
	if err := ow.flushGroup(&st, len(ow.g.dict), len(ow.g.data)); err != nil {
		return st, err
	}
	// The last header chunk is decompressed into the group content
	// buffer, done with: a new buffer would come on top of it until the
	// collector runs.
	meta.buf, ow.g = ow.g.data[:0], group{}
	if err := meta.flush(); err != nil {
		return st, err
	}
	metaBuf.Write(binary.AppendUvarint(metaTmp[:0], 0))
	ow.bufs = gbufs{}
	if err := ow.op(opEnd); err != nil {
		return st, err
	}
	if err := oz.Close(); err != nil {
		return st, err
	}
	sp.h.Sum(st.Target[:0])
	st.TargetSize = sp.n
	st.MetaSize = int64(metaBuf.Len())
	st.OpsSize = int64(opsBuf.Len())

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
	ph := sha256.New()
	mw := io.MultiWriter(w, ph)
	for _, part := range [][]byte{hdr, binary.BigEndian.AppendUint64(nil, uint64(metaBuf.Len())), metaBuf.Bytes(),
		binary.BigEndian.AppendUint64(nil, uint64(opsBuf.Len())), opsBuf.Bytes()} {
		if _, err := mw.Write(part); err != nil {
			return st, err
		}
		st.PatchSize += int64(len(part))
	}
	if _, err := w.Write(ph.Sum(nil)); err != nil {
		return st, err
	}
	st.PatchSize += sha256.Size
	return st, nil
}

// encodeMeta appends to dst one chunk of the header stream: its length,
// then the chunk encoded against the old layers' non-content bytes the way
// a content group is (see gdiff.go). Tar headers of files that did not
// change differ from their old versions in a few bytes at fixed places
// (size, mtime, checksum), which a byte-wise difference turns into zeros:
// a third or less of what zstd with the same bytes as dictionary makes
// (npm pair: 3.0 KiB to 0.7 KiB). gdiff writes over chunk.
func encodeMeta(dst, dict, chunk []byte, ow *opWriter) ([]byte, error) {
	ctrl, db, eb := gdiff(dict, chunk, slackText, metaStride, &ow.bufs)
	dst = binary.AppendUvarint(dst, uint64(len(chunk)))
	var err error
	for _, raw := range [][]byte{ctrl, db, eb} {
		if dst, err = packStream(dst, raw, ow.zs, &ow.bufs); err != nil {
			return nil, err
		}
	}
	return dst, nil
}

// extend returns b with n more bytes, reallocating (with room to spare)
// only when it must.
func extend(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		// Room for more small files, or a somewhat larger next file, but
		// not half again a large buffer: every buffer outgrown is garbage
		// that adds to the peak until the collector runs.
		nb := make([]byte, len(b), len(b)+n+min(max(len(b)/2, n/4), 4<<20))
		copy(nb, b)
		b = nb
	}
	return b[:len(b)+n]
}

// diffFile encodes one regular file's content, read from tr.
func diffFile(ix *baseIndex, o *Options, ow *opWriter, tr io.Reader, h *tar.Header, st *Stats) error {
	st.Files++
	g := &ow.g
	if h.Size > o.MaxPatchFile {
		// Too large to hold: stream it whole, after the open group.
		st.RawFiles++
		st.RawBytes += h.Size
		if err := ow.flushGroup(st, len(g.dict), len(g.data)); err != nil {
			return err
		}
		if err := ow.op(opRaw); err != nil {
			return err
		}
		_, err := io.CopyN(ow.z, tr, h.Size)
		return err
	}
	// A group this file would probably fill (its old version taken to be
	// as large as the new) is written first, so that the buffers do not
	// hold a full group and the next file's versions too.
	if g.files > 0 && int64(len(g.dict)+len(g.data))+2*h.Size > int64(ow.max) {
		if err := ow.flushGroup(st, len(g.dict), len(g.data)); err != nil {
			return err
		}
	}
	// The new content goes straight to the end of the group's content,
	// and is taken back off if it does not join the group.
	d0 := len(g.data)
	g.data = extend(g.data, int(h.Size))
	data := g.data[d0:]
	if _, err := io.ReadFull(tr, data); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrTarUnsound, h.Name, err)
	}
	sum := Digest(sha256.Sum256(data))
	name := cleanName(h.Name)
	prev, hasPrev := ix.visible[name]
	if hasPrev && prev.sum == sum {
		g.data = g.data[:d0]
		return ref(ow, prev, st)
	}
	if r, ok := ix.byHash[sum]; ok {
		g.data = g.data[:d0]
		return ref(ow, r, st)
	}
	// The base: the old version of this path or, for a new file, an old
	// file that probably shares content (same base name, or same extension
	// and a similar size).
	dict := false
	if !hasPrev || prev.size == 0 {
		hasPrev = false
		if !o.NoDict {
			if ow.names == nil {
				// Built at the first new file: most layer updates
				// have none, and it is as large as the index.
				ow.names = newNameIndex(ix)
			}
			prev, hasPrev = ow.names.candidate(name, h.Size)
			dict = hasPrev
		}
	}
	hasPrev = hasPrev && prev.size <= o.MaxPatchFile
	b0 := len(g.dict)
	var base []byte
	off, inDict := g.inDict[prev.ord]
	readBase := func() error {
		b0 = len(g.dict)
		g.dict = extend(g.dict, int(prev.size))
		base = g.dict[b0:]
		_, err := io.ReadFull(io.NewSectionReader(ix.readers[prev.layer], prev.offset, prev.size), base)
		return err
	}
	switch {
	case !hasPrev:
	case inDict:
		base = g.dict[off : off+int(prev.size)]
	default:
		if err := readBase(); err != nil {
			return err
		}
	}
	// The file joins the group; a full group is written first.
	bin := isBinary(data) || hasPrev && isBinary(base)
	if g.files > 0 && len(g.dict)+len(g.data) > ow.max {
		if err := ow.flushGroup(st, b0, d0); err != nil {
			return err
		}
		if hasPrev && inDict {
			// Its base was in the group just written.
			if err := readBase(); err != nil {
				return err
			}
			inDict = false
		} else {
			b0 = 0
		}
	}
	if hasPrev && !inDict {
		g.inDict[prev.ord] = b0
		g.bases = append(g.bases, prev.ord)
	}
	g.files++
	if bin {
		g.binBytes += h.Size
	}
	if hasPrev {
		st.PatchedFiles++
		st.PatchedBytes += h.Size
		if dict {
			st.DictFiles++
			st.DictBytes += h.Size
		}
	} else {
		st.RawFiles++
		st.RawBytes += h.Size
	}
	return ow.op(opGrouped)
}

// isBinary reports whether b's start holds a NUL byte.
func isBinary(b []byte) bool {
	return bytes.IndexByte(b[:min(len(b), binarySniff)], 0) >= 0
}

// nameIndex finds, for a new file with no old version, an old file likely
// to share content with it: the visible old file of the same base name with
// the longest common path suffix (then the closest size), or else one of
// the same extension with the closest size within a factor of 4. It is a
// guess; Diff keeps the patch only if it beats compressing the file alone.
type nameIndex struct {
	byBase map[string][]namedRef
	byDir  map[string][]namedRef
	byExt  map[string][]namedRef // sorted by size
}

type namedRef struct {
	name string
	ref  fileRef
}

func newNameIndex(ix *baseIndex) *nameIndex {
	n := &nameIndex{byBase: map[string][]namedRef{}, byDir: map[string][]namedRef{}, byExt: map[string][]namedRef{}}
	for name, ref := range ix.visible {
		if ref.size == 0 {
			continue
		}
		nr := namedRef{name, ref}
		base := path.Base(name)
		n.byBase[base] = append(n.byBase[base], nr)
		n.byDir[path.Dir(name)] = append(n.byDir[path.Dir(name)], nr)
		if ext := path.Ext(base); ext != "" && ext != base {
			n.byExt[ext] = append(n.byExt[ext], nr)
		}
	}
	// Deterministic choices: the map above is walked in random order.
	for _, l := range n.byDir {
		slices.SortFunc(l, func(a, b namedRef) int { return strings.Compare(a.name, b.name) })
	}
	for _, l := range n.byBase {
		slices.SortFunc(l, func(a, b namedRef) int { return strings.Compare(a.name, b.name) })
	}
	for _, l := range n.byExt {
		slices.SortFunc(l, func(a, b namedRef) int {
			return cmp.Or(cmp.Compare(a.ref.size, b.ref.size), strings.Compare(a.name, b.name))
		})
	}
	return n
}

func (n *nameIndex) candidate(name string, size int64) (fileRef, bool) {
	base := path.Base(name)
	if l := n.byBase[base]; len(l) > 0 {
		best, bestCommon, bestDist := -1, -1, int64(0)
		for i, c := range l {
			common := commonSuffix(c.name, name)
			dist := max(c.ref.size-size, size-c.ref.size)
			if common > bestCommon || common == bestCommon && dist < bestDist {
				best, bestCommon, bestDist = i, common, dist
			}
		}
		return l[best].ref, true
	}
	// A file of the same directory and extension whose name starts or
	// ends the same way (new_x.go and x.go, x_v2.js and x.js).
	ext := path.Ext(base)
	stem := strings.TrimSuffix(base, ext)
	var best *namedRef
	bestScore := 2 // at least 3 characters in common
	for i, c := range n.byDir[path.Dir(name)] {
		cb := path.Base(c.name)
		if path.Ext(cb) != ext {
			continue
		}
		cs := strings.TrimSuffix(cb, ext)
		score := max(commonPrefix(cs, stem), commonPrefix(reverse(cs), reverse(stem)))
		if score > bestScore || score == bestScore && best != nil && abs(c.ref.size-size) < abs(best.ref.size-size) {
			best, bestScore = &n.byDir[path.Dir(name)][i], score
		}
	}
	if best != nil && best.ref.size <= 4*size && size <= 4*best.ref.size {
		return best.ref, true
	}
	l := n.byExt[ext]
	if ext == "" || ext == base || len(l) == 0 {
		return fileRef{}, false
	}
	i, _ := slices.BinarySearchFunc(l, size, func(c namedRef, s int64) int { return cmp.Compare(c.ref.size, s) })
	var c *namedRef
	for _, j := range []int{i - 1, i} {
		if j >= 0 && j < len(l) && (c == nil || abs(l[j].ref.size-size) < abs(c.ref.size-size)) {
			c = &l[j]
		}
	}
	if c == nil || c.ref.size > 4*size || size > 4*c.ref.size {
		return fileRef{}, false
	}
	return c.ref, true
}

func abs(x int64) int64 { return max(x, -x) }

func commonPrefix(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

func reverse(s string) string {
	b := []byte(s)
	slices.Reverse(b)
	return string(b)
}

// commonSuffix counts the trailing path elements a and b share.
func commonSuffix(a, b string) int {
	n := 0
	for a != "" && b != "" {
		ia, ib := strings.LastIndexByte(a, '/'), strings.LastIndexByte(b, '/')
		if a[ia+1:] != b[ib+1:] {
			break
		}
		n++
		if ia < 0 || ib < 0 {
			break
		}
		a, b = a[:ia], b[:ib]
	}
	return n
}

func ref(ow *opWriter, r fileRef, st *Stats) error {
	st.RefFiles++
	st.RefBytes += r.size
	return ow.op(opRef, ow.step(r.ord))
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

// ---------------------------------------------------------------- applying

// Info describes a patch, from its header.
type Info struct {
	Target     Digest // diffID of the layer the patch rebuilds
	TargetSize int64
	Bases      []Digest // diffIDs of the old layers, lowest first
	Version    int      // format version of the patch
	baseSizes  []uint64
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return ErrTruncated
	}
	return err
}

// ReadInfo reads only the header of a patch; the checksum, which covers the
// whole patch, is checked by Apply.
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
	if fixed[7] != Version && fixed[7] != 3 {
		return info, fmt.Errorf("%w: %d (this build reads 3 and %d)", ErrVersion, fixed[7], Version)
	}
	info.Version = int(fixed[7])
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

// merger is the reverse of splitter: tar.Reader reads the rebuilt tar from
// it, header bytes from the header stream and, after a regular file's
// header, its content from the op that supplies it. Everything read is
// written to out.
type merger struct {
	meta    io.Reader
	content io.Reader
	left    int64 // content bytes still to come
	out     io.Writer
	n       int64
	max     int64 // the target size: a damaged patch writes no further
}

func (m *merger) Read(p []byte) (int, error) {
	var n int
	var err error
	if m.left > 0 {
		p = p[:min(int64(len(p)), m.left)]
		n, err = m.content.Read(p)
		m.left -= int64(n)
		if err == io.EOF {
			if m.left > 0 {
				return n, fmt.Errorf("%w: file content ended early", ErrCorrupt)
			}
			err = nil
		}
	} else {
		n, err = m.meta.Read(p)
	}
	if m.n+int64(n) > m.max {
		return 0, fmt.Errorf("%w: rebuilds more than the target's %d bytes", ErrCorrupt, m.max)
	}
	m.n += int64(n)
	if _, werr := m.out.Write(p[:n]); werr != nil {
		return n, werr
	}
	return n, err
}

// Apply rebuilds the new layer's uncompressed tar from the old layers (the
// same, in the same order, as given to Diff) and patch, writing it to w.
//
// Before writing anything it reads every old layer once and checks their
// diffIDs against those the patch names; at the end it checks the patch's
// checksum and the result's diffID. On any error the bytes written to w are
// not the target and must be discarded.
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

	section := func() (io.Reader, error) {
		var l [8]byte
		if _, err := io.ReadFull(pr, l[:]); err != nil {
			return nil, truncated(err)
		}
		return io.LimitReader(pr, int64(binary.BigEndian.Uint64(l[:])&(1<<62-1))), nil
	}
	metaSec, err := section()
	if err != nil {
		return info, err
	}
	if metaSec.(*io.LimitedReader).N > maxMetaSection {
		return info, fmt.Errorf("%w: header stream of %d bytes", ErrCorrupt, metaSec.(*io.LimitedReader).N)
	}
	metaComp, err := io.ReadAll(metaSec)
	if err != nil {
		return info, err
	}
	if metaSec.(*io.LimitedReader).N > 0 || int64(len(metaComp)) == 0 {
		return info, ErrTruncated
	}
	var meta io.Reader = &metaReader{r: bytes.NewReader(metaComp), dict: ix.dict}
	if info.Version == 3 {
		dopts := []zstd.DOption{zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(uint64(metaWindow(len(ix.dict))))}
		if len(ix.dict) > 0 {
			dopts = append(dopts, zstd.WithDecoderDictRaw(1, ix.dict))
		}
		mz, err := zstd.NewReader(bytes.NewReader(metaComp), dopts...)
		if err != nil {
			return info, err
		}
		defer mz.Close()
		meta = mz
	}
	opsSec, err := section()
	if err != nil {
		return info, err
	}
	oz, err := zstd.NewReader(opsSec, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(opsWindow))
	if err != nil {
		return info, err
	}
	defer oz.Close()
	ops := bufio.NewReader(oz)

	oh := sha256.New()
	bw := bufio.NewWriterSize(io.MultiWriter(w, oh), 1<<16)
	m := &merger{meta: meta, out: bw, max: info.TargetSize}
	tr := tar.NewReader(m)
	var oldTotal int64
	for _, f := range ix.files {
		oldTotal += f.size
	}
	next, nextBase := 0, 0
	step := func(next *int) (fileRef, error) {
		v, err := binary.ReadUvarint(ops)
		if err != nil {
			return fileRef{}, streamErr(err)
		}
		ord := int64(*next) + (int64(v>>1) ^ -int64(v&1))
		if ord < 0 || ord >= int64(len(ix.files)) {
			return fileRef{}, fmt.Errorf("%w: reference to old file %d of %d", ErrCorrupt, ord, len(ix.files))
		}
		*next = int(ord) + 1
		return ix.files[ord], nil
	}
	var grp *groupReader // the open group, decoded as its files take its content
	// endGroup checks that the open group's content was used up and its
	// streams ended with it.
	endGroup := func() error {
		if grp == nil {
			return nil
		}
		if grp.left > 0 {
			return fmt.Errorf("%w: %d bytes of group content left over", ErrCorrupt, grp.left)
		}
		if err := grp.finish(); err != nil {
			return err
		}
		grp = nil
		return nil
	}
	// group reads a group's header and streams and opens its content.
	group := func() error {
		if err := endGroup(); err != nil {
			return err
		}
		nb, err := binary.ReadUvarint(ops)
		if err != nil {
			return streamErr(err)
		}
		if nb > uint64(len(ix.files)) {
			return fmt.Errorf("%w: group of %d old files", ErrCorrupt, nb)
		}
		bases := make([]fileRef, nb)
		var dictLen int64
		for i := range bases {
			if bases[i], err = step(&nextBase); err != nil {
				return err
			}
			dictLen += bases[i].size
		}
		if dictLen > oldTotal {
			return fmt.Errorf("%w: group dictionary of %d bytes", ErrCorrupt, dictLen)
		}
		newLen, err := binary.ReadUvarint(ops)
		if err != nil {
			return streamErr(err)
		}
		if newLen == 0 || newLen > uint64(info.TargetSize) {
			return fmt.Errorf("%w: group of %d bytes", ErrCorrupt, newLen)
		}
		// Controls take at least 3 bytes each, and each adds or copies a
		// byte at least; differences and extra bytes are at most newLen.
		var streams [3]*packed
		for i := range streams {
			if streams[i], err = openStream(ops, ops, 3*newLen+3); err != nil {
				return err
			}
		}
		dict := make([]byte, 0, dictLen)
		for _, f := range bases {
			dict = dict[:len(dict)+int(f.size)]
			if _, err := io.ReadFull(io.NewSectionReader(ix.readers[f.layer], f.offset, f.size), dict[len(dict)-int(f.size):]); err != nil {
				return err
			}
		}
		grp = newGroupReader(dict, streams[0], streams[1], streams[2], int64(newLen))
		return nil
	}
	for {
		if err := ctx.Err(); err != nil {
			return info, err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return info, streamErr(err)
		}
		if !isRegular(h) || h.Size == 0 {
			continue
		}
		code, err := ops.ReadByte()
		if err != nil {
			return info, streamErr(err)
		}
		if code == opGroup {
			if err := group(); err != nil {
				return info, err
			}
			if code, err = ops.ReadByte(); err != nil {
				return info, streamErr(err)
			}
		}
		switch code {
		case opRef:
			f, err := step(&next)
			if err != nil {
				return info, err
			}
			if f.size != h.Size {
				return info, fmt.Errorf("%w: %s: referenced old file has %d bytes, header says %d", ErrCorrupt, h.Name, f.size, h.Size)
			}
			m.content = io.NewSectionReader(ix.readers[f.layer], f.offset, f.size)
		case opGrouped:
			if grp == nil || grp.left < h.Size {
				left := int64(0)
				if grp != nil {
					left = grp.left
				}
				return info, fmt.Errorf("%w: %s: %d bytes, %d left in its group", ErrCorrupt, h.Name, h.Size, left)
			}
			m.content = grp
		case opRaw:
			m.content = ops
		default:
			return info, fmt.Errorf("%w: op %d where %s's content belongs", ErrCorrupt, code, h.Name)
		}
		m.left = h.Size
	}
	if m.left > 0 {
		return info, fmt.Errorf("%w: archive ended inside a file", ErrCorrupt)
	}
	// Bytes after the end-of-archive blocks.
	if _, err := io.Copy(io.Discard, m); err != nil {
		return info, streamErr(err)
	}
	if err := endGroup(); err != nil {
		return info, err
	}
	if code, err := ops.ReadByte(); err != nil || code != opEnd {
		if err != nil {
			return info, streamErr(err)
		}
		return info, fmt.Errorf("%w: op %d after the last file", ErrCorrupt, code)
	}
	if _, err := ops.ReadByte(); err != io.EOF {
		if err == nil {
			return info, fmt.Errorf("%w: data after the end op", ErrCorrupt)
		}
		return info, streamErr(err)
	}
	if opsSec.(*io.LimitedReader).N > 0 {
		if _, err := io.Copy(io.Discard, opsSec); err != nil {
			return info, err
		}
		return info, fmt.Errorf("%w: data after the op stream", ErrCorrupt)
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
	if m.n != info.TargetSize {
		return info, fmt.Errorf("%w: rebuilt %d bytes, target has %d", ErrMismatch, m.n, info.TargetSize)
	}
	if d := Digest(oh.Sum(nil)); d != info.Target {
		return info, fmt.Errorf("%w: rebuilt %s, target %s", ErrMismatch, d, info.Target)
	}
	return info, nil
}

// metaReader decodes a version 4 header stream, a chunk at a time.
type metaReader struct {
	r     *bytes.Reader
	dict  []byte
	chunk *groupReader // nil between chunks
	end   bool
}

func (m *metaReader) Read(p []byte) (int, error) {
	for {
		if m.chunk != nil {
			n, err := m.chunk.Read(p)
			if err == io.EOF {
				m.chunk = nil
				if n == 0 {
					continue
				}
				err = nil
			}
			return n, err
		}
		if m.end {
			return 0, io.EOF
		}
		n, err := binary.ReadUvarint(m.r)
		if err != nil {
			return 0, streamErr(err)
		}
		if n == 0 {
			if m.r.Len() > 0 {
				return 0, fmt.Errorf("%w: %d bytes after the header stream's end", ErrCorrupt, m.r.Len())
			}
			m.end = true
			return 0, io.EOF
		}
		if n > metaChunk {
			return 0, fmt.Errorf("%w: header chunk of %d bytes", ErrCorrupt, n)
		}
		var streams [3]*packed
		for i := range streams {
			if streams[i], err = openStream(m.r, m.r, 3*n+3); err != nil {
				return 0, err
			}
		}
		m.chunk = newGroupReader(m.dict, streams[0], streams[1], streams[2], int64(n))
	}
}

// streamErr classifies an error reading either stream.
func streamErr(err error) error {
	switch {
	case errors.Is(err, ErrCorrupt), errors.Is(err, ErrTruncated):
		return err
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ErrTruncated
	}
	return fmt.Errorf("%w: %v", ErrCorrupt, err)
}
