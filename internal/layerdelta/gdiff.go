package layerdelta

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"

	dbzip2 "github.com/dsnet/compress/bzip2"
	"github.com/klauspost/compress/zstd"
)

// A content group is encoded the way bsdiff encodes a file (Colin
// Percival's algorithm: approximate matches whose byte-wise difference
// compresses well, the rest as new bytes), with the group's old files,
// concatenated, as the old side and its new content as the new side. It
// differs from bsdiff in how it finds matches, in its control encoding and
// in its compression:
//
//   - bsdiff sorts the old side's suffixes to find, at each position of
//     the new side, the longest match anywhere (16 bytes of memory a byte
//     of old side and, in go-bsdiff, 0.5 to 2 s a MiB); here a hash table
//     of the old side's 8-byte strings at every matchStride-th position
//     (4 bytes an entry, an entry for every two positions but at most
//     1<<maxTableBits entries: one a position made no pair's delta
//     smaller and the Go source pair's Diff peak 3 MiB larger) and a chain
//     through earlier positions of the same hash (4 bytes every
//     matchStride bytes of old side) give the longest of up to
//     chainDepth+1 candidates, not always the longest match there is
//     (a stride of 4 made the Go binaries' delta 8% larger);
//   - controls are uvarints (add length, extra length, zigzag seek);
//   - each of the three streams (controls, difference bytes, extra bytes)
//     is compressed with zstd or bzip2, whichever is smaller (bzip2 is
//     much the better on the sparse difference bytes of rebuilt
//     binaries).
//
// slack is bsdiff's "8": how many bytes a match found elsewhere must beat
// the current alignment by to end it. 8 suits binaries (relinked code
// moves by small amounts); on text a larger value avoids jumps to common
// snippets elsewhere that cost more controls than they save.

const (
	matchLen    = 8
	matchStride = 2
	// metaStride is the stride of the header stream's matcher. Tar
	// headers match their old versions over hundreds of bytes, so
	// fewer entries lose little: against 2, the Go source pair's header
	// stream 2.2 -> 2.4 KiB and npm's 674 -> 725 B, for an eighth of
	// the chain (Diff's heap peak on the Go source pair 40 -> 32 MiB).
	metaStride   = 16
	maxTableBits = 20
	slackBinary  = 8
	slackText    = 32
	// maxExtend bounds how far one lookup extends a match, so that a
	// region that matches in many places costs linear time.
	maxExtend = 1 << 16
)

type matcher struct {
	old    []byte
	table  []int32
	chain  []int32 // chain[i/stride]: the previous position of the same hash
	stride int
	shift  uint
}

// bzip2Level sets bzip2's block size (100 kB a level). Small blocks suit
// difference bytes, whose statistics change along a binary, and cost less
// memory (the transform sorts with 16 bytes a byte of block): level 2
// against 9 made the Go binaries' delta 374.2 -> 363.1 KiB and Diff's peak
// RSS 114 -> 99 MiB, the npm pair's the same size (bench/deltas).
const bzip2Level = 2

// chainDepth is how many earlier positions of the same hash a lookup also
// tries. 64 against 16: npm 19.8 -> 19.6 KiB, gobin 376.6 -> 374.1 KiB,
// gosrc 9.6 -> 9.3 KiB, the same CPU time on gobin.
var chainDepth = 64

// gbufs are gdiff's buffers, kept from one group to the next.
type gbufs struct {
	table, chain []int32
	ctrl, eb     []byte
	scratch      bytes.Buffer
	bz           *dbzip2.Writer
}

func newMatcher(old []byte, stride int, bufs *gbufs) *matcher {
	b := max(min(bits.Len(uint(len(old)/stride))-1, maxTableBits), 10)
	if cap(bufs.table) < 1<<b {
		bufs.table = make([]int32, 1<<b)
	}
	table := bufs.table[:1<<b]
	for i := range table {
		table[i] = -1
	}
	m := &matcher{old: old, table: table, stride: stride, shift: uint(64 - b)}
	if n := len(old)/stride + 1; cap(bufs.chain) < n {
		// With room for a somewhat larger next group: an outgrown chain
		// is garbage as large as the base.
		bufs.chain = make([]int32, n, n+n/4)
	}
	m.chain = bufs.chain[:len(old)/stride+1]
	for i := 0; i+matchLen <= len(old); i += stride {
		h := m.hash(old[i:])
		m.chain[i/stride] = m.table[h]
		m.table[h] = int32(i)
	}
	return m
}

func (m *matcher) hash(b []byte) uint64 {
	return (binary.LittleEndian.Uint64(b) * 0x9E3779B185EBCA87) >> m.shift
}

// search returns a match for the start of nw: its length and its position
// in the old side.
func (m *matcher) search(nw []byte, want int) (n, pos int) {
	if len(nw) < matchLen {
		return 0, 0
	}
	p := m.table[m.hash(nw)]
	for d := 0; p >= 0; d++ {
		o := m.old[p:]
		l := min(len(o), len(nw), maxExtend)
		k := 0
		for k+8 <= l && binary.LittleEndian.Uint64(o[k:]) == binary.LittleEndian.Uint64(nw[k:]) {
			k += 8
		}
		for k < l && o[k] == nw[k] {
			k++
		}
		if k > n || k == n && abs(int64(int(p)-want)) < abs(int64(pos-want)) {
			n, pos = k, int(p)
		}
		if d >= chainDepth || n >= maxExtend {
			break
		}
		p = m.chain[int(p)/m.stride]
	}
	if n < matchLen {
		return 0, 0
	}
	return n, pos
}

// gdiff computes a group's controls, difference and extra bytes. The
// difference bytes are written over nw's start (each is written at or
// before the position of the new byte it comes from, once nothing reads
// that far back any more): nw is lost.
func gdiff(old, nw []byte, slack, stride int, bufs *gbufs) (ctrl, db, eb []byte) {
	m := newMatcher(old, stride, bufs)
	ctrl, eb = bufs.ctrl[:0], bufs.eb[:0]
	dbLen := 0
	oldsize, newsize := len(old), len(nw)
	at := func(i int) int { // old byte at i, or -1 outside
		if i >= 0 && i < oldsize {
			return int(old[i])
		}
		return -1
	}
	scan, ln, lastscan, lastpos, lastoffset, pos := 0, 0, 0, 0, 0, 0
	for scan < newsize {
		oldscore := 0
		scan += ln
		scsc := scan
		for ; scan < newsize; scan++ {
			ln, pos = m.search(nw[scan:], scan+lastoffset)
			for ; scsc < scan+ln; scsc++ {
				if at(scsc+lastoffset) == int(nw[scsc]) {
					oldscore++
				}
			}
			if (ln == oldscore && ln != 0) || ln > oldscore+slack {
				break
			}
			if at(scan+lastoffset) == int(nw[scan]) {
				oldscore--
			}
		}
		if ln == oldscore && scan != newsize {
			continue
		}
		// Extend the last match forward and this one backward, each as long
		// as at least half its bytes match.
		s, sf, lenf := 0, 0, 0
		for i := 0; lastscan+i < scan && lastpos+i < oldsize; {
			if old[lastpos+i] == nw[lastscan+i] {
				s++
			}
			i++
			if s*2-i > sf*2-lenf {
				sf, lenf = s, i
			}
		}
		lenb := 0
		if scan < newsize {
			s, sb := 0, 0
			for i := 1; scan >= lastscan+i && pos >= i; i++ {
				if old[pos-i] == nw[scan-i] {
					s++
				}
				if s*2-i > sb*2-lenb {
					sb, lenb = s, i
				}
			}
		}
		if lastscan+lenf > scan-lenb {
			overlap := lastscan + lenf - (scan - lenb)
			s, ss, lens := 0, 0, 0
			for i := 0; i < overlap; i++ {
				if nw[lastscan+lenf-overlap+i] == old[lastpos+lenf-overlap+i] {
					s++
				}
				if nw[scan-lenb+i] == old[pos-lenb+i] {
					s--
				}
				if s > ss {
					ss, lens = s, i+1
				}
			}
			lenf += lens - overlap
			lenb -= lens
		}
		for i := 0; i < lenf; i++ {
			nw[dbLen+i] = nw[lastscan+i] - old[lastpos+i]
		}
		dbLen += lenf
		eb = append(eb, nw[lastscan+lenf:scan-lenb]...)
		seek := int64(pos - lenb - (lastpos + lenf))
		ctrl = binary.AppendUvarint(ctrl, uint64(lenf))
		ctrl = binary.AppendUvarint(ctrl, uint64(scan-lenb-(lastscan+lenf)))
		ctrl = binary.AppendUvarint(ctrl, uint64(seek<<1)^uint64(seek>>63))
		lastscan, lastpos, lastoffset = scan-lenb, pos-lenb, pos-scan
	}
	bufs.ctrl, bufs.eb = ctrl, eb
	return ctrl, nw[:dbLen], eb
}

// groupReader rebuilds a group's content (or a header chunk) from its old
// side and its three streams as it is read, checking every length and
// position: Apply holds the old side, the streams' compressed bytes and
// their decoders, not the decoded difference and extra bytes or the
// content. After the last byte, a Read checks that every stream ended
// there too, and answers io.EOF or the corruption.
type groupReader struct {
	old        []byte
	ctrl       *bufio.Reader
	db, eb     io.Reader
	streams    []*packed // checked to end with the content
	left       int64     // content bytes still to come
	add, extra int64     // of the current control, still to come
	seek       int64     // the current control's move, after its add
	oldpos     int64
	done       bool
	err        error
}

func newGroupReader(old []byte, ctrl, db, eb *packed, newLen int64) *groupReader {
	return &groupReader{old: old, ctrl: bufio.NewReader(ctrl), db: db, eb: eb,
		streams: []*packed{ctrl, db, eb}, left: newLen}
}

func (g *groupReader) Read(p []byte) (int, error) {
	if g.err != nil {
		return 0, g.err
	}
	if g.left == 0 {
		if g.err = g.finish(); g.err != nil {
			return 0, g.err
		}
		return 0, io.EOF
	}
	for g.add == 0 && g.extra == 0 {
		if g.err = g.next(); g.err != nil {
			return 0, g.err
		}
	}
	p = p[:min(int64(len(p)), g.left)]
	if g.add > 0 {
		k := int(min(int64(len(p)), g.add))
		if _, err := io.ReadFull(g.db, p[:k]); err != nil {
			g.err = fmt.Errorf("%w: group difference bytes end early: %v", ErrCorrupt, err)
			return 0, g.err
		}
		for i, b := range g.old[g.oldpos : g.oldpos+int64(k)] {
			p[i] += b
		}
		g.oldpos += int64(k)
		g.add -= int64(k)
		g.left -= int64(k)
		return k, nil
	}
	k := int(min(int64(len(p)), g.extra))
	if _, err := io.ReadFull(g.eb, p[:k]); err != nil {
		g.err = fmt.Errorf("%w: group extra bytes end early: %v", ErrCorrupt, err)
		return 0, g.err
	}
	g.extra -= int64(k)
	g.left -= int64(k)
	return k, nil
}

// next reads the next control, after moving by the last one's seek.
func (g *groupReader) next() error {
	g.oldpos += g.seek
	g.seek = 0
	add, err1 := binary.ReadUvarint(g.ctrl)
	extra, err2 := binary.ReadUvarint(g.ctrl)
	zs, err3 := binary.ReadUvarint(g.ctrl)
	if err1 != nil || err2 != nil || err3 != nil {
		return fmt.Errorf("%w: group controls end with %d bytes to come", ErrCorrupt, g.left)
	}
	seek := int64(zs>>1) ^ -int64(zs&1)
	if add > uint64(g.left) || g.oldpos < 0 || uint64(g.oldpos)+add > uint64(len(g.old)) {
		return fmt.Errorf("%w: group control adds %d bytes at %d", ErrCorrupt, add, g.oldpos)
	}
	if extra > uint64(g.left)-add {
		return fmt.Errorf("%w: group control copies %d new bytes", ErrCorrupt, extra)
	}
	if seek < -(1<<40) || seek > 1<<40 {
		return fmt.Errorf("%w: group control seeks %d", ErrCorrupt, seek)
	}
	g.add, g.extra, g.seek = int64(add), int64(extra), seek
	return nil
}

// finish checks, once the content is complete, that the controls left
// add nothing and that every stream ends where its length says.
func (g *groupReader) finish() error {
	if g.done {
		return nil
	}
	g.done = true
	for {
		if _, err := g.ctrl.ReadByte(); err == io.EOF {
			break
		} else if err != nil {
			return err
		}
		// Only controls that add and copy nothing may follow the content.
		if err := g.ctrl.UnreadByte(); err != nil {
			return err
		}
		g.left = 0
		if err := g.next(); err != nil {
			return err
		}
		if g.add > 0 || g.extra > 0 {
			return fmt.Errorf("%w: group controls go past its %d bytes", ErrCorrupt, g.left)
		}
	}
	for _, s := range g.streams {
		if err := s.finish(); err != nil {
			return err
		}
	}
	return nil
}

// gpatch rebuilds a group's newLen bytes of content from its old side and
// decoded streams, checking every length and position against them.
func gpatch(old, ctrl, db, eb []byte, newLen int) ([]byte, error) {
	mem := func(b []byte) *packed { return &packed{r: bytes.NewReader(b), raw: uint64(len(b))} }
	g := newGroupReader(old, mem(ctrl), mem(db), mem(eb), int64(newLen))
	out := make([]byte, newLen)
	if _, err := io.ReadFull(g, out); err != nil {
		return nil, streamErr(err)
	}
	if err := g.finish(); err != nil {
		return nil, err
	}
	return out, nil
}

const (
	streamZstd  = 0
	streamBzip2 = 1
)

// packStream appends to dst one compressed stream: a method byte, the raw
// length, the compressed length and the compressed bytes (zstd with enc,
// or bzip2 when it is smaller).
func packStream(dst, raw []byte, enc *zstd.Encoder, bufs *gbufs) ([]byte, error) {
	scratch := &bufs.scratch
	n0 := len(dst)
	dst = enc.EncodeAll(raw, dst) // moved below once the lengths are known
	z := dst[n0:]
	method, best := byte(streamZstd), z
	if len(raw) > 1024 {
		scratch.Reset()
		if bufs.bz == nil {
			bw, err := dbzip2.NewWriter(scratch, &dbzip2.WriterConfig{Level: bzip2Level})
			if err != nil {
				return nil, err
			}
			bufs.bz = bw
		} else if err := bufs.bz.Reset(scratch); err != nil {
			return nil, err
		}
		bw := bufs.bz
		if _, err := bw.Write(raw); err != nil {
			return nil, err
		}
		if err := bw.Close(); err != nil {
			return nil, err
		}
		if scratch.Len() < len(z) {
			method, best = streamBzip2, scratch.Bytes()
		}
	}
	var hdr []byte
	hdr = append(hdr, method)
	hdr = binary.AppendUvarint(hdr, uint64(len(raw)))
	hdr = binary.AppendUvarint(hdr, uint64(len(best)))
	if method == streamZstd {
		// Make room for the header before the zstd bytes.
		dst = append(dst, hdr...)
		copy(dst[n0+len(hdr):], dst[n0:len(dst)-len(hdr)])
		copy(dst[n0:], hdr)
		return dst, nil
	}
	dst = append(append(dst[:n0], hdr...), best...)
	return dst, nil
}

// packed is one stream written by packStream, decoded as it is read: it
// yields exactly its raw length, and finish checks that the decoder ends
// there.
type packed struct {
	r   io.Reader
	raw uint64
	n   uint64
}

func (s *packed) Read(p []byte) (int, error) {
	if s.n >= s.raw {
		return 0, io.EOF
	}
	p = p[:min(uint64(len(p)), s.raw-s.n)]
	n, err := s.r.Read(p)
	s.n += uint64(n)
	switch {
	case err == io.EOF && s.n < s.raw:
		return n, fmt.Errorf("%w: group stream of %d bytes, want %d", ErrCorrupt, s.n, s.raw)
	case err != nil && err != io.EOF:
		return n, fmt.Errorf("%w: group stream: %v", ErrCorrupt, err)
	}
	return n, nil
}

func (s *packed) finish() error {
	if s.n != s.raw {
		return fmt.Errorf("%w: group stream of %d bytes, %d used", ErrCorrupt, s.raw, s.n)
	}
	var one [1]byte
	for {
		n, err := s.r.Read(one[:])
		switch {
		case n > 0:
			return fmt.Errorf("%w: group stream longer than it says", ErrCorrupt)
		case err == io.EOF:
			return nil
		case err != nil:
			return fmt.Errorf("%w: group stream: %v", ErrCorrupt, err)
		}
	}
}

// openStream reads the header and compressed bytes of one stream written
// by packStream (its raw length may be at most limit) and returns it, to
// be decoded as it is read. A zstd stream is decoded at once (EncodeAll
// frames hold their whole content as window anyway); a bzip2 one, the
// usual choice for difference bytes, streams.
func openStream(r io.ByteReader, rd io.Reader, limit uint64) (*packed, error) {
	method, err := r.ReadByte()
	if err != nil {
		return nil, streamErr(err)
	}
	rawLen, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, streamErr(err)
	}
	clen, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, streamErr(err)
	}
	if rawLen > limit || clen > rawLen+rawLen>>8+1<<16 {
		return nil, fmt.Errorf("%w: group stream of %d bytes in %d", ErrCorrupt, rawLen, clen)
	}
	// Lengths come from the patch, whose checksum is checked last: memory
	// grows with the bytes that arrive, not with what a damaged length says.
	comp, err := io.ReadAll(io.LimitReader(rd, int64(min(clen, 1<<62))))
	if err != nil {
		return nil, streamErr(err)
	}
	if uint64(len(comp)) < clen {
		return nil, ErrTruncated
	}
	switch method {
	case streamZstd:
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(max(rawLen, 1<<20)),
			zstd.WithDecoderMaxWindow(uint64(max(windowFor(0, int(min(rawLen, 1<<40))), groupStreamWindow))))
		if err != nil {
			return nil, err
		}
		defer d.Close()
		out, err := d.DecodeAll(comp, nil)
		if err != nil || uint64(len(out)) != rawLen {
			return nil, fmt.Errorf("%w: group stream of %d bytes, want %d: %v", ErrCorrupt, len(out), rawLen, err)
		}
		return &packed{r: bytes.NewReader(out), raw: rawLen}, nil
	case streamBzip2:
		return &packed{r: bzip2.NewReader(bytes.NewReader(comp)), raw: rawLen}, nil
	}
	return nil, fmt.Errorf("%w: group stream method %d", ErrCorrupt, method)
}

// unpackStream reads and decodes one stream written by packStream whole.
func unpackStream(r io.ByteReader, rd io.Reader, limit uint64) ([]byte, error) {
	s, err := openStream(r, rd, limit)
	if err != nil {
		return nil, err
	}
	out := make([]byte, s.raw)
	if _, err := io.ReadFull(s, out); err != nil {
		return nil, streamErr(err)
	}
	if err := s.finish(); err != nil {
		return nil, err
	}
	return out, nil
}
