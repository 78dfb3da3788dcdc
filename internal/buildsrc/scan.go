// Package buildsrc checks and reads a developer's build upload: a tar,
// optionally gzip-compressed, with a compose file at its root and the
// Dockerfiles and build contexts of its services. Bad input is refused with
// an *Error naming what is wrong before anything is built.
package buildsrc

import (
	"context"
	"fmt"
	"path"
	"strings"
)

const (
	defaultMaxEntries        = 100000
	defaultMaxComposeSize    = 1 << 20
	defaultMaxDockerfileSize = 1 << 20
)

// composeNames are tried in this order, the order docker compose uses.
var composeNames = []string{"docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml"}

// Options bound the work Scan does on one upload; zero values take the
// defaults.
type Options struct {
	MaxEntries        int   // tar members; default 100000
	MaxComposeSize    int64 // bytes; default 1 MiB
	MaxDockerfileSize int64 // bytes; default 1 MiB
}

// Project is what an upload describes.
type Project struct {
	// ComposeFile is the compose file's path in the tar, or "" when the
	// project is a single Dockerfile at the root.
	ComposeFile string
	// Services are sorted by name; names are unique.
	Services []Service
}

// Service is one compose service, limited to what a fleet release carries.
type Service struct {
	Name        string
	Build       *Build // nil when the service only names an image
	Image       string // with Build set, only informational
	Environment map[string]string
	Labels      map[string]string
	Ports       []string // short syntax, e.g. "8080:80/tcp"
	Volumes     []string // short syntax with named or anonymous volumes, e.g. "data:/var/lib/app"
	Restart     string   // "no", always, on-failure[:N], unless-stopped; "" means unless-stopped
	Privileged  bool
	CapAdd      []string
	DependsOn   []string
}

// Build is how to build a service's image from the upload.
type Build struct {
	Context    string // directory inside the tar, cleaned, "." for the root
	Dockerfile string // path relative to Context
	Args       map[string]string
	Target     string
	// NeedsRun tells whether building for a platform other than the
	// builder's own executes that platform's binaries: some stage the
	// target depends on (through FROM, COPY --from or RUN --mount from=)
	// has a RUN instruction and does not run on $BUILDPLATFORM. Without it,
	// a builder with no emulation can still build for foreign platforms.
	NeedsRun bool
}

// Scan reads the spooled upload at path and returns the project it
// describes. Bad input gives an *Error; any other error is a failure to read
// the spool file itself or ctx ending.
func Scan(ctx context.Context, path string, opts Options) (*Project, error) {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = defaultMaxEntries
	}
	if opts.MaxComposeSize <= 0 {
		opts.MaxComposeSize = defaultMaxComposeSize
	}
	if opts.MaxDockerfileSize <= 0 {
		opts.MaxDockerfileSize = defaultMaxDockerfileSize
	}
	ix, err := readIndex(ctx, path, opts.MaxEntries)
	if err != nil {
		return nil, err
	}
	proj, err := readCompose(ctx, path, ix, opts)
	if err != nil {
		return nil, err
	}
	if err := readDockerfiles(ctx, path, ix, proj, opts); err != nil {
		return nil, err
	}
	return proj, nil
}

func readCompose(ctx context.Context, src string, ix *index, opts Options) (*Project, error) {
	for _, n := range composeNames {
		p, e := ix.lookup(n)
		if e == nil || e.kind != kindFile {
			continue
		}
		if e.size > opts.MaxComposeSize {
			return nil, newError(CodeComposeInvalid, nil, "The compose file %s is larger than %d bytes.", n, opts.MaxComposeSize)
		}
		files, err := readFiles(ctx, src, map[string]bool{p: true})
		if err != nil {
			return nil, err
		}
		services, perr := parseCompose(n, files[p])
		if perr != nil {
			return nil, perr
		}
		return &Project{ComposeFile: n, Services: services}, nil
	}
	// Like balena, a lone Dockerfile at the root is a one-service project.
	if _, e := ix.lookup("Dockerfile"); e != nil && e.kind == kindFile {
		return &Project{Services: []Service{{
			Name:  "main",
			Build: &Build{Context: ".", Dockerfile: "Dockerfile"},
		}}}, nil
	}
	return nil, newError(CodeComposeMissing, nil, "The upload has no %s at its root, nor a Dockerfile.", strings.Join(composeNames, ", "))
}

// readDockerfiles checks that every build context and Dockerfile is in the
// upload and parses each Dockerfile to fill in NeedsRun.
func readDockerfiles(ctx context.Context, src string, ix *index, proj *Project, opts Options) error {
	var missing, invalid []FieldError
	where := map[string]string{} // service name -> resolved Dockerfile member
	want := map[string]bool{}
	for _, s := range proj.Services {
		if s.Build == nil {
			continue
		}
		field := "services." + s.Name + ".build"
		if _, e := ix.lookup(s.Build.Context); e == nil || e.kind != kindDir {
			missing = append(missing, FieldError{field + ".context", fmt.Sprintf("directory %q is not in the upload", s.Build.Context)})
			continue
		}
		df := path.Join(s.Build.Context, s.Build.Dockerfile)
		p, e := ix.lookup(df)
		switch {
		case e == nil || e.kind != kindFile:
			missing = append(missing, FieldError{field + ".dockerfile", fmt.Sprintf("%q is not a file of the upload", df)})
		case e.size > opts.MaxDockerfileSize:
			invalid = append(invalid, FieldError{df, fmt.Sprintf("larger than %d bytes", opts.MaxDockerfileSize)})
		default:
			where[s.Name], want[p] = p, true
		}
	}
	if len(missing) > 0 {
		return listError(CodeDockerfileMissing, "The upload lacks build sources", missing)
	}
	if len(invalid) == 0 && len(want) > 0 {
		files, err := readFiles(ctx, src, want)
		if err != nil {
			return err
		}
		for i := range proj.Services {
			s := &proj.Services[i]
			p, ok := where[s.Name]
			if !ok {
				continue
			}
			df := path.Join(s.Build.Context, s.Build.Dockerfile)
			nr, err := needsRun(files[p], s.Build.Target, s.Build.Args)
			if err != nil {
				invalid = append(invalid, FieldError{df, fmt.Sprintf("%v (service %s)", err, s.Name)})
				continue
			}
			s.Build.NeedsRun = nr
		}
	}
	if len(invalid) > 0 {
		return listError(CodeDockerfileInvalid, "The upload has unusable Dockerfiles", invalid)
	}
	return nil
}
