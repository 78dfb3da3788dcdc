// Command flock-image builds the flock-api OCI image without a container
// engine: it cross-compiles a static binary per platform (CGO_ENABLED=0),
// writes it with a minimal root filesystem (a non-root user, CA
// certificates, /tmp) as layers through go-containerregistry, and writes the
// image index as an OCI layout and an oci-archive tarball; with --push it
// also sends it to a registry. `make image` runs it; deploy/README.md says
// why this builder.
//
// Same sources, flags and --created give the same digest: layer entries
// carry --created as their time and root as their owner, and the binary is
// built with -trimpath and without the VCS stamp (the commit comes from
// --ldflags, as in `make build`).
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Where things are in the image, and who runs it. 65532 is the "nonroot"
// user of distroless and ko images, so policies written for those fit.
const (
	BinaryPath = "/usr/local/bin/flock-api"
	UID        = 65532
	GID        = 65532
	HTTPPort   = "8080/tcp"
	MQTTPort   = "1883/tcp"
)

// Label keys (OCI image-spec annotations, used as config labels too).
const (
	LabelTitle    = "org.opencontainers.image.title"
	LabelVersion  = "org.opencontainers.image.version"
	LabelRevision = "org.opencontainers.image.revision"
	LabelSource   = "org.opencontainers.image.source"
	LabelCreated  = "org.opencontainers.image.created"
	LabelRefName  = "org.opencontainers.image.ref.name"
)

type options struct {
	src       string
	out       string
	platforms []v1.Platform
	ldflags   string
	version   string
	revision  string
	source    string
	created   time.Time
	caCerts   string
	push      string
	goCmd     string
}

func main() {
	opts, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "flock-image: %v\n", err)
		os.Exit(2)
	}
	if err := run(context.Background(), opts, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "flock-image: %v\n", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (*options, error) {
	fs := flag.NewFlagSet("flock-image", flag.ContinueOnError)
	o := &options{}
	var platforms, created string
	fs.StringVar(&o.src, "src", "..", "directory of the flock-api main module")
	fs.StringVar(&o.out, "out", "../build/image", "output directory: oci/ (OCI layout), flock-api.tar (oci-archive), bin/")
	fs.StringVar(&platforms, "platforms", "linux/amd64", "comma-separated os/arch[/variant] list, e.g. linux/amd64,linux/arm64")
	fs.StringVar(&o.ldflags, "ldflags", "", "go build -ldflags (the Makefile's LDFLAGS: version and commit)")
	fs.StringVar(&o.version, "version", "", "org.opencontainers.image.version (the Makefile's VERSION)")
	fs.StringVar(&o.revision, "revision", "", "org.opencontainers.image.revision (the Makefile's COMMIT)")
	fs.StringVar(&o.source, "source", "https://github.com/flock-io/flock-api", "org.opencontainers.image.source")
	fs.StringVar(&created, "created", "", "RFC 3339 time of the image and its files (default: $SOURCE_DATE_EPOCH, else now)")
	fs.StringVar(&o.caCerts, "ca-certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle copied into the image (Debian's ca-certificates)")
	fs.StringVar(&o.goCmd, "go", "go", "the go command")
	fs.StringVar(&o.push, "push", "", "also push the image index to this reference (registry/repo:tag)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.version == "" || o.revision == "" {
		return nil, errors.New("--version and --revision are required (make image passes VERSION and COMMIT)")
	}
	for _, p := range strings.Split(platforms, ",") {
		pl, err := v1.ParsePlatform(strings.TrimSpace(p))
		if err != nil {
			return nil, fmt.Errorf("--platforms: %w", err)
		}
		if pl.OS != "linux" {
			return nil, fmt.Errorf("--platforms: %q: only linux images are built", p)
		}
		o.platforms = append(o.platforms, *pl)
	}
	var err error
	if o.created, err = parseCreated(created, os.Getenv("SOURCE_DATE_EPOCH")); err != nil {
		return nil, err
	}
	return o, nil
}

func parseCreated(flagValue, epoch string) (time.Time, error) {
	switch {
	case flagValue != "":
		t, err := time.Parse(time.RFC3339, flagValue)
		if err != nil {
			return time.Time{}, fmt.Errorf("--created: %w", err)
		}
		return t.UTC(), nil
	case epoch != "":
		var sec int64
		if _, err := fmt.Sscanf(epoch, "%d", &sec); err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
		}
		return time.Unix(sec, 0).UTC(), nil
	default:
		return time.Now().UTC().Truncate(time.Second), nil
	}
}

func run(ctx context.Context, o *options, stdout io.Writer) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	certs, err := os.ReadFile(o.caCerts)
	if err != nil {
		return fmt.Errorf("CA certificates (apt-get install ca-certificates, or --ca-certs): %w", err)
	}
	base, err := baseLayer(certs, o.created)
	if err != nil {
		return err
	}
	labels := map[string]string{
		LabelTitle:    "flock-api",
		LabelVersion:  o.version,
		LabelRevision: o.revision,
		LabelSource:   o.source,
		LabelCreated:  o.created.Format(time.RFC3339),
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, pl := range o.platforms {
		bin, err := buildBinary(ctx, o, pl)
		if err != nil {
			return err
		}
		img, err := image(base, bin, pl, labels, o.created)
		if err != nil {
			return err
		}
		size, err := imageSize(img)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: binary %s, layers %s compressed\n", pl.String(), mib(fileSize(bin)), mib(size))
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &pl, Annotations: labels},
		})
	}
	idx = mutate.Annotations(idx, labels).(v1.ImageIndex)
	digest, err := idx.Digest()
	if err != nil {
		return err
	}

	dir := filepath.Join(o.out, "oci")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	refName := tagOf(o.push, o.version)
	if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{LabelRefName: refName})); err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	archive := filepath.Join(o.out, "flock-api.tar")
	if err := tarDir(dir, archive, o.created); err != nil {
		return fmt.Errorf("write oci-archive: %w", err)
	}
	fmt.Fprintf(stdout, "image index %s (%s, %s)\n  OCI layout: %s (ref %s)\n  oci-archive: %s (%s)\n",
		digest, o.version, o.revision, dir, refName, archive, mib(fileSize(archive)))

	if o.push != "" {
		ref, err := name.ParseReference(o.push)
		if err != nil {
			return fmt.Errorf("--push: %w", err)
		}
		if err := remote.WriteIndex(ref, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return fmt.Errorf("push %s: %w", ref, err)
		}
		fmt.Fprintf(stdout, "  pushed: %s@%s\n", ref.Context(), digest)
	}
	return nil
}

// buildBinary cross-compiles flock-api for one platform into out/bin/.
func buildBinary(ctx context.Context, o *options, pl v1.Platform) (string, error) {
	dir, err := filepath.Abs(filepath.Join(o.out, "bin", strings.ReplaceAll(pl.String(), "/", "_")))
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "flock-api")
	// -s -w drop the symbol table and DWARF (about a third of the file);
	// panics and pprof still name functions from the pclntab.
	cmd := exec.CommandContext(ctx, o.goCmd, "build", "-trimpath", "-buildvcs=false",
		"-ldflags", strings.TrimSpace(o.ldflags+" -s -w"), "-o", bin, ".")
	cmd.Dir = o.src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+pl.OS, "GOARCH="+pl.Architecture)
	switch {
	case pl.Architecture == "arm" && pl.Variant != "":
		cmd.Env = append(cmd.Env, "GOARM="+strings.TrimPrefix(pl.Variant, "v"))
	case pl.Architecture == "amd64" && pl.Variant != "":
		cmd.Env = append(cmd.Env, "GOAMD64="+pl.Variant)
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build for %s: %w", pl.String(), err)
	}
	return bin, nil
}

// image is one platform's image: the shared base layer, then the binary.
func image(base v1.Layer, bin string, pl v1.Platform, labels map[string]string, created time.Time) (v1.Image, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	binLayer, err := layerOf(created, []entry{
		{path: "usr/", mode: 0o755 | fs.ModeDir},
		{path: "usr/local/", mode: 0o755 | fs.ModeDir},
		{path: "usr/local/bin/", mode: 0o755 | fs.ModeDir},
		// Owned by root and not writable by the user that runs it.
		{path: strings.TrimPrefix(BinaryPath, "/"), mode: 0o755, data: data},
	})
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: base, MediaType: types.OCILayer, History: v1.History{
			Created: v1.Time{Time: created}, CreatedBy: "flock-image: /etc/passwd, /etc/group, CA certificates, /tmp", Comment: "base"}},
		mutate.Addendum{Layer: binLayer, MediaType: types.OCILayer, History: v1.History{
			Created: v1.Time{Time: created}, CreatedBy: "flock-image: CGO_ENABLED=0 go build -trimpath " + BinaryPath, Comment: "flock-api"}},
	)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = pl.OS, pl.Architecture, pl.Variant
	cf.Created = v1.Time{Time: created}
	cf.Config = v1.Config{
		// Numeric, so Kubernetes' runAsNonRoot can check it without
		// reading /etc/passwd.
		User:       fmt.Sprintf("%d:%d", UID, GID),
		Entrypoint: []string{BinaryPath},
		// Go finds the CA bundle at its Debian path by itself.
		Env:          []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		WorkingDir:   "/",
		ExposedPorts: map[string]struct{}{HTTPPort: {}, MQTTPort: {}},
		Labels:       labels,
		StopSignal:   "SIGTERM",
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	return mutate.Annotations(img, labels).(v1.Image), nil
}

// baseLayer holds what a static Go binary needs from a root filesystem: a
// passwd/group entry for its user (user.Current, and tools that show
// names), root CA certificates for TLS to Zitadel, S3, Kafka and the rest,
// nsswitch.conf so the Go resolver reads /etc/hosts first, and a
// world-writable /tmp (Kubernetes mounts an emptyDir over it when the root
// filesystem is read-only).
func baseLayer(certs []byte, created time.Time) (v1.Layer, error) {
	passwd := fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/home/nonroot:/sbin/nologin\n", UID, GID)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", GID)
	return layerOf(created, []entry{
		{path: "etc/", mode: 0o755 | fs.ModeDir},
		{path: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{path: "etc/group", mode: 0o644, data: []byte(group)},
		{path: "etc/nsswitch.conf", mode: 0o644, data: []byte("hosts: files dns\n")},
		{path: "etc/ssl/", mode: 0o755 | fs.ModeDir},
		{path: "etc/ssl/certs/", mode: 0o755 | fs.ModeDir},
		{path: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: certs},
		{path: "home/", mode: 0o755 | fs.ModeDir},
		{path: "home/nonroot/", mode: 0o700 | fs.ModeDir, uid: UID, gid: GID},
		{path: "root/", mode: 0o700 | fs.ModeDir},
		{path: "tmp/", mode: 0o777 | fs.ModeDir | fs.ModeSticky},
	})
}

type entry struct {
	path     string
	mode     fs.FileMode
	uid, gid int
	data     []byte
}

// layerOf writes entries as an uncompressed tar with fixed times and
// owners, and lets go-containerregistry compress it once (gzip), so the
// layer digest depends only on the content.
func layerOf(created time.Time, entries []entry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name:    e.path,
			Mode:    int64(e.mode.Perm()),
			Uid:     e.uid,
			Gid:     e.gid,
			ModTime: created,
			Format:  tar.FormatPAX,
		}
		if e.mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		if e.mode.IsDir() {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	raw := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
}

// tarDir writes dir as a tar (the oci-archive form of an OCI layout, which
// `podman load`, `skopeo copy oci-archive:` and `docker load` read), in
// name order with fixed times.
func tarDir(dir, archive string, created time.Time) error {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		paths = append(paths, p)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(paths)
	f, err := os.Create(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		h := &tar.Header{Name: filepath.ToSlash(rel), ModTime: created, Mode: 0o644, Format: tar.FormatPAX}
		if fi.IsDir() {
			h.Name += "/"
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		} else {
			h.Typeflag, h.Size = tar.TypeReg, fi.Size()
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !fi.IsDir() {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, src)
			src.Close()
			if err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

var tagBad = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// tagOf is the layout's ref name: the tag being pushed, else the version
// made a valid tag.
func tagOf(push, version string) string {
	if push != "" {
		if t, err := name.NewTag(push); err == nil {
			return t.TagStr()
		}
	}
	t := tagBad.ReplaceAllString(version, "_")
	if len(t) > 128 {
		t = t[:128]
	}
	return t
}

func imageSize(img v1.Image) (int64, error) {
	layers, err := img.Layers()
	if err != nil {
		return 0, err
	}
	var n int64
	for _, l := range layers {
		s, err := l.Size()
		if err != nil {
			return 0, err
		}
		n += s
	}
	return n, nil
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
