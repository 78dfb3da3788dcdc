package buildsrc

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
)

// Extract writes the whole tree of the upload at src under dest, which must
// exist and be empty. Every member is checked as Scan checks it before any is
// written, and the writing goes through an os.Root, so that even a member the
// checks missed cannot land outside dest. Regular files, directories,
// symlinks and hard links are written with their permission bits (setuid,
// setgid and sticky bits are dropped, as are owners and times).
func Extract(ctx context.Context, src, dest string) error {
	if _, err := readIndex(ctx, src, defaultMaxEntries); err != nil {
		return err
	}
	root, err := os.OpenRoot(dest)
	if err != nil {
		return fmt.Errorf("buildsrc: open extraction root: %w", err)
	}
	defer root.Close()
	tr, c, err := openTar(src)
	if err != nil {
		return err
	}
	defer c.Close()

	// Directory modes are set last: a read-only directory must still take
	// the members below it.
	type dirMode struct {
		name string
		mode fs.FileMode
	}
	var dirs []dirMode
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return newError(CodeSourceInvalid, err, "The upload is not a valid tar archive.")
		}
		name, e := checkHeader(h)
		if e != nil {
			return e
		}
		mode := fs.FileMode(h.Mode) & fs.ModePerm
		if name == "" {
			// dest belongs to the caller: the tar's root entry does not
			// get to change its mode.
			continue
		}
		if dir := path.Dir(name); dir != "." {
			if err := root.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("buildsrc: extract %s: %w", h.Name, err)
			}
		}
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.Mkdir(name, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("buildsrc: extract %s: %w", h.Name, err)
			}
			dirs = append(dirs, dirMode{name, mode})
		case tar.TypeSymlink:
			if err := root.Symlink(h.Linkname, name); err != nil {
				return fmt.Errorf("buildsrc: extract %s: %w", h.Name, err)
			}
		case tar.TypeLink:
			if err := root.Link(path.Clean(h.Linkname), name); err != nil {
				return fmt.Errorf("buildsrc: extract %s: %w", h.Name, err)
			}
		default:
			if err := writeFile(root, name, mode, tr); err != nil {
				return fmt.Errorf("buildsrc: extract %s: %w", h.Name, err)
			}
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := root.Chmod(dirs[i].name, dirs[i].mode); err != nil {
			return fmt.Errorf("buildsrc: extract %s: %w", dirs[i].name, err)
		}
	}
	return nil
}

func writeFile(root *os.Root, name string, mode fs.FileMode, r io.Reader) error {
	f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	// Chmod after writing because the umask trims the mode given at create
	// time, and a read-only file could not be written otherwise.
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
