package buildsrc

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

type entryKind int

const (
	kindDir entryKind = iota
	kindFile
	kindSymlink
	kindHardlink
)

// entry is what the index keeps of one tar member; explicit is false for
// directories that only exist because some member lies below them.
type entry struct {
	kind     entryKind
	link     string // symlink target as written, or cleaned hard link target
	size     int64
	explicit bool
}

// index is every path of the tar after the member checks, keyed by cleaned
// path relative to the root (never "." itself).
type index struct {
	entries map[string]*entry
	count   int
}

// maxLinkHops bounds symlink resolution like the kernel's ELOOP limit does,
// so a cycle of links is refused instead of looping.
const maxLinkHops = 40

// openTar opens the spooled upload and returns a tar reader on it,
// decompressing when the file starts with the gzip magic bytes.
func openTar(p string) (*tar.Reader, io.Closer, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, fmt.Errorf("buildsrc: open upload: %w", err)
	}
	br := bufio.NewReader(f)
	magic, err := br.Peek(2)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, nil, fmt.Errorf("buildsrc: read upload: %w", err)
	}
	if len(magic) == 0 {
		f.Close()
		return nil, nil, newError(CodeSourceInvalid, nil, "The upload is empty; it must be a tar archive, optionally gzip-compressed.")
	}
	var r io.Reader = br
	if bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			f.Close()
			return nil, nil, newError(CodeSourceInvalid, err, "The upload starts like gzip but is not a valid gzip stream.")
		}
		r = zr
	}
	return tar.NewReader(r), f, nil
}

// checkHeader refuses members that could write outside the root or are not
// plain files, directories or links, and returns the member's cleaned path
// ("" for the root itself and for headers that carry no file).
func checkHeader(h *tar.Header) (string, *Error) {
	switch h.Typeflag {
	case tar.TypeXGlobalHeader:
		return "", nil
	case tar.TypeReg, tar.TypeRegA, tar.TypeDir, tar.TypeSymlink, tar.TypeLink:
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return "", fieldError(CodePathEscapes, h.Name, "is a device or fifo, which a build source may not contain",
			"The tar entry %q is a device or fifo; only regular files, directories and links are allowed.", h.Name)
	default:
		return "", fieldError(CodeSourceInvalid, h.Name, fmt.Sprintf("has unsupported tar type %q", h.Typeflag),
			"The tar entry %q has an unsupported type %q; only regular files, directories and links are allowed.", h.Name, h.Typeflag)
	}
	name, e := cleanMemberPath(h.Name)
	if e != nil {
		return "", e
	}
	switch h.Typeflag {
	case tar.TypeSymlink:
		if h.Linkname == "" {
			return "", fieldError(CodeSourceInvalid, h.Name, "symlink has no target",
				"The symlink %q has an empty target.", h.Name)
		}
		if path.IsAbs(h.Linkname) {
			return "", fieldError(CodePathEscapes, h.Name, "absolute symlink target "+h.Linkname,
				"The symlink %q points to the absolute path %q; symlinks must be relative and stay inside the project.", h.Name, h.Linkname)
		}
	case tar.TypeLink:
		if _, e := cleanMemberPath(h.Linkname); e != nil || path.Clean(h.Linkname) == "." {
			return "", fieldError(CodePathEscapes, h.Name, "hard link to "+h.Linkname,
				"The hard link %q points to %q, which is outside the project.", h.Name, h.Linkname)
		}
	}
	if name == "" && h.Typeflag != tar.TypeDir {
		return "", fieldError(CodeSourceInvalid, h.Name, "names the root",
			"The tar entry %q names the project root but is not a directory.", h.Name)
	}
	return name, nil
}

// cleanMemberPath returns the path cleaned and relative to the root, "" for
// the root. Tars made with "tar -C dir ." prefix every name with "./", which
// is fine; only a path that leaves the root is refused.
func cleanMemberPath(name string) (string, *Error) {
	if name == "" || strings.ContainsRune(name, 0) {
		return "", fieldError(CodeSourceInvalid, name, "invalid name",
			"The tar has an entry with an invalid name %q.", name)
	}
	if path.IsAbs(name) {
		return "", fieldError(CodePathEscapes, name, "absolute path",
			"The tar entry %q has an absolute path; paths must be relative to the project root.", name)
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fieldError(CodePathEscapes, name, "leaves the project root",
			"The tar entry %q leaves the project root.", name)
	}
	if c == "." {
		return "", nil
	}
	return c, nil
}

func fieldError(code, field, fieldDetail, format string, args ...any) *Error {
	e := newError(code, nil, format, args...)
	e.Fields = []FieldError{{Field: field, Detail: fieldDetail}}
	return e
}

// add records a checked member. Members below a symlink are refused so that
// every member's lexical directory is its real one, which is what makes the
// symlink check in checkLinks sound; a path given twice is refused because
// which one wins would depend on the extractor.
func (ix *index) add(name string, h *tar.Header) *Error {
	if name == "" {
		return nil
	}
	parts := strings.Split(name, "/")
	for i := 1; i < len(parts); i++ {
		dir := strings.Join(parts[:i], "/")
		switch e := ix.entries[dir]; {
		case e == nil:
			ix.entries[dir] = &entry{kind: kindDir}
		case e.kind == kindSymlink:
			return fieldError(CodePathEscapes, h.Name, "lies below the symlink "+dir,
				"The tar entry %q lies below the symlink %q; entries may not be written through symlinks.", h.Name, dir)
		case e.kind != kindDir:
			return fieldError(CodeSourceInvalid, h.Name, "lies below the file "+dir,
				"The tar entry %q lies below %q, which is not a directory.", h.Name, dir)
		}
	}
	n := &entry{explicit: true, size: h.Size}
	switch h.Typeflag {
	case tar.TypeDir:
		n.kind = kindDir
	case tar.TypeSymlink:
		n.kind, n.link = kindSymlink, h.Linkname
	case tar.TypeLink:
		target := path.Clean(h.Linkname)
		t := ix.entries[target]
		if t == nil || !t.explicit || (t.kind != kindFile && t.kind != kindHardlink) {
			return fieldError(CodePathEscapes, h.Name, "hard link to "+h.Linkname+", which is not an earlier file of the tar",
				"The hard link %q points to %q, which is not a file earlier in the tar.", h.Name, h.Linkname)
		}
		n.kind, n.link = kindHardlink, target
		if t.kind == kindHardlink {
			n.link = t.link
		}
	default:
		n.kind = kindFile
	}
	if old := ix.entries[name]; old != nil {
		if old.kind == kindDir && n.kind == kindDir {
			old.explicit = true
			return nil
		}
		return fieldError(CodeSourceInvalid, h.Name, "appears more than once",
			"The tar entry %q appears more than once.", h.Name)
	}
	ix.entries[name] = n
	return nil
}

// readIndex reads every member header, checking each, then checks where the
// symlinks lead once all of them are known.
func readIndex(ctx context.Context, p string, maxEntries int) (*index, error) {
	tr, c, err := openTar(p)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ix := &index{entries: map[string]*entry{}}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, newError(CodeSourceInvalid, err, "The upload is not a valid tar archive.")
		}
		ix.count++
		if ix.count > maxEntries {
			return nil, newError(CodeSourceInvalid, nil, "The upload has more than %d entries.", maxEntries)
		}
		name, e := checkHeader(h)
		if e != nil {
			return nil, e
		}
		if e := ix.add(name, h); e != nil {
			return nil, e
		}
	}
	if ix.count == 0 {
		return nil, newError(CodeSourceInvalid, nil, "The upload is not a tar archive, or an empty one.")
	}
	return ix, ix.checkLinks()
}

func (ix *index) checkLinks() error {
	for name, e := range ix.entries {
		if e.kind != kindSymlink {
			continue
		}
		if _, err := ix.resolve(path.Dir(name), e.link); err != nil {
			return fieldError(CodePathEscapes, name, "symlink to "+e.link+" "+err.Error(),
				"The symlink %q points to %q, which %s.", name, e.link, err.Error())
		}
	}
	return nil
}

var (
	errOutside = errors.New("resolves outside the project")
	errLoop    = errors.New("goes through too many symlinks")
)

// resolve follows target from directory dir ("." for the root) the way the
// kernel would, through the symlinks of the tar, and returns the path it
// reaches. Components the tar does not have are taken as plain names, since
// they could only become directories the extractor makes itself.
func (ix *index) resolve(dir, target string) (string, error) {
	var stack []string
	if dir != "." && dir != "" {
		stack = strings.Split(dir, "/")
	}
	pending := strings.Split(target, "/")
	hops := 0
	for len(pending) > 0 {
		c := pending[0]
		pending = pending[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(stack) == 0 {
				return "", errOutside
			}
			stack = stack[:len(stack)-1]
			continue
		}
		p := strings.Join(append(stack[:len(stack):len(stack)], c), "/")
		if e := ix.entries[p]; e != nil && e.kind == kindSymlink {
			if hops++; hops > maxLinkHops {
				return "", errLoop
			}
			if path.IsAbs(e.link) {
				return "", errOutside
			}
			pending = append(strings.Split(e.link, "/"), pending...)
			continue
		}
		stack = append(stack, c)
	}
	if len(stack) == 0 {
		return ".", nil
	}
	return strings.Join(stack, "/"), nil
}

// lookup returns the path of the regular file or directory that name leads
// to after following symlinks and hard links, and its entry.
func (ix *index) lookup(name string) (string, *entry) {
	p, err := ix.resolve(".", name)
	if err != nil {
		return "", nil
	}
	if p == "." {
		return p, &entry{kind: kindDir}
	}
	e := ix.entries[p]
	if e != nil && e.kind == kindHardlink {
		return e.link, ix.entries[e.link]
	}
	return p, e
}

// readFiles returns the contents of the given member paths (regular files
// only), in one more pass over the tar.
func readFiles(ctx context.Context, p string, want map[string]bool) (map[string][]byte, error) {
	tr, c, err := openTar(p)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	out := make(map[string][]byte, len(want))
	for len(out) < len(want) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		h, err := tr.Next()
		if err != nil {
			return nil, newError(CodeSourceInvalid, err, "The upload could not be read a second time.")
		}
		name := path.Clean(h.Name)
		if !want[name] || (h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeRegA) {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, newError(CodeSourceInvalid, err, "The tar entry %q could not be read.", h.Name)
		}
		out[name] = b
	}
	return out, nil
}
