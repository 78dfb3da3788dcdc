// Package buildah builds service images with the buildah CLI, run as a
// subprocess: one Dockerfile, one platform, into a containers/storage
// location of the caller's choosing, then pushed to a registry.
//
// Builds run with chroot isolation on the vfs storage driver, which need
// neither a daemon nor overlay or fuse support from the host. Chroot
// isolation is not a security boundary: RUN steps share the host's network
// and, when we run as root, run as root. Untrusted Dockerfiles need a
// sandbox around the whole builder (a VM or an unprivileged container).
package buildah

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Binary is the name New looks up in PATH.
const Binary = "buildah"

// MaxLine is the longest output line Output is given; longer lines come in
// pieces, so a build printing megabytes without a newline cannot make us
// hold them.
const MaxLine = 64 << 10

// TailLines is how many of buildah's last output lines a BuildError keeps.
const TailLines = 20

// KillGrace is how long a cancelled buildah has between SIGTERM and SIGKILL
// to remove its working container and unmount.
var KillGrace = 5 * time.Second

// Engine runs one buildah binary. It holds no state between calls and is
// safe for concurrent use: each call names its own storage and work dir.
type Engine struct {
	bin string
}

// New finds buildah: bin, or Binary in PATH when bin is "".
func New(bin string) (*Engine, error) {
	if bin == "" {
		bin = Binary
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("buildah is not installed (%v): install it with `apt-get install buildah`", err)
	}
	return &Engine{bin: path}, nil
}

// Bin is the path of the buildah binary the engine runs.
func (e *Engine) Bin() string { return e.bin }

// Version is buildah's version, e.g. "1.28.2".
func (e *Engine) Version(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, e.bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("buildah --version: %w", err)
	}
	// "buildah version 1.28.2 (image-spec 1.1.0-rc2, runtime-spec 1.0.2-dev)"
	f := strings.Fields(string(out))
	if len(f) < 3 || f[0] != "buildah" || f[1] != "version" {
		return "", fmt.Errorf("buildah --version: unexpected output %q", strings.TrimSpace(string(out)))
	}
	return f[2], nil
}

// Storage is a containers/storage location on the vfs driver. Builds that
// share one share base images and cached layers; give each tenant its own
// so no build can reuse (or probe for) another's layers.
type Storage struct {
	// Root holds images and layers (buildah --root).
	Root string
	// RunRoot holds locks and mount state (buildah --runroot).
	RunRoot string
}

func (s Storage) check() error {
	if s.Root == "" || s.RunRoot == "" {
		return errors.New("storage root and run root must both be set")
	}
	return nil
}

// PullPolicy says when a build fetches its base images from the registry.
type PullPolicy string

const (
	// PullMissing pulls a base image only when Storage has no image by
	// that name: a tag moved in the registry is not seen until the image
	// is removed from Storage.
	PullMissing PullPolicy = "missing"
	// PullNewer asks the registry every build and pulls when the tag
	// points elsewhere than the stored image.
	PullNewer PullPolicy = "true"
	// PullAlways pulls every base image on every build.
	PullAlways PullPolicy = "always"
	// PullNever uses only images already in Storage.
	PullNever PullPolicy = "never"
)

// BuildOptions describe one build.
type BuildOptions struct {
	Storage Storage
	// WorkDir is the build's own scratch directory, which it must not share
	// with another build running at the same time: buildah's HOME, TMPDIR
	// and XDG_RUNTIME_DIR, its registries.conf, the auth file and the
	// secret files go there. The caller removes it.
	WorkDir string
	// Context is the build context directory.
	Context string
	// Dockerfile is the Dockerfile's path, absolute or relative to
	// Context; "" is Context/Dockerfile.
	Dockerfile string
	// Platform is the Flock architecture to build for (see PlatformOf).
	Platform string
	// Target is the stage to build; "" is the last.
	Target string
	// Args are --build-arg values. They end up on buildah's command line
	// and in the image's history: nothing secret goes here.
	Args map[string]string
	// Secrets are what `RUN --mount=type=secret,id=ID` reads, by ID. They
	// are written to files in WorkDir readable only by us, never put on a
	// command line, and not kept in the image.
	Secrets map[string]string
	// Labels are set on the image.
	Labels map[string]string
	// Tag names the image in Storage, for Push; "" leaves it unnamed.
	Tag string
	// Auth is a containers-auth.json document (the format of `buildah
	// login`'s auth file, which docker's config.json also reads as) with
	// the credentials for the registries base images come from.
	Auth []byte
	// Insecure are registry hosts (host[:port]) reached over plain HTTP or
	// with unverified TLS.
	Insecure []string
	// Pull is when to pull base images; "" is PullMissing.
	Pull PullPolicy
	// Layers commits each step as a cached layer in Storage and reuses
	// cached layers from earlier builds there.
	Layers bool
	// Output, if set, gets every line buildah prints (stdout and stderr
	// together), in order, from one goroutine, as it comes.
	Output func(line string)
}

// BuildResult is what a successful build made.
type BuildResult struct {
	// ImageID is the built image's ID in Storage ("sha256:...").
	ImageID string
	// Steps is how many Dockerfile steps ran, over every stage built.
	Steps int
	// CachedSteps is how many of them came from the layer cache.
	CachedSteps int
}

// BuildError is a build that buildah ran and that failed.
type BuildError struct {
	// Step is the last step buildah started, as it printed it, e.g.
	// "STEP 3/5: RUN make" or "[1/2] STEP 3/5: RUN make" in a multi-stage
	// build; "" when it failed before its first step.
	Step string
	// Message is buildah's own "Error: ..." line, without "Error: ".
	Message string
	// ExitCode is buildah's exit status.
	ExitCode int
	// Tail is the last TailLines lines of output.
	Tail []string
}

func (e *BuildError) Error() string {
	var b strings.Builder
	b.WriteString("buildah")
	if e.Step != "" {
		fmt.Fprintf(&b, " failed at %q", e.Step)
	} else {
		b.WriteString(" failed")
	}
	fmt.Fprintf(&b, " (exit status %d)", e.ExitCode)
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	return b.String()
}

// stepLine matches the lines buildah starts a step with: "STEP 2/5: RUN
// make", or "[1/2] STEP 2/5: RUN make" in a build with several stages.
var stepLine = regexp.MustCompile(`^(\[\d+/\d+\] )?STEP \d+/\d+: `)

// cacheLine is how buildah says a step came from the layer cache: "-->
// Using cache 4e37c7a8ff91...".
const cacheLine = "--> Using cache "

// Build builds one image. A build that fails returns a *BuildError; one
// whose ctx ends returns an error wrapping ctx.Err().
func (e *Engine) Build(ctx context.Context, o BuildOptions) (BuildResult, error) {
	if err := o.Storage.check(); err != nil {
		return BuildResult{}, fmt.Errorf("build: %w", err)
	}
	if o.Context == "" {
		return BuildResult{}, errors.New("build: no context directory")
	}
	platform, err := PlatformOf(o.Platform)
	if err != nil {
		return BuildResult{}, fmt.Errorf("build: %w", err)
	}
	ws, err := prepare(o.WorkDir, o.Storage, o.Auth, o.Insecure)
	if err != nil {
		return BuildResult{}, fmt.Errorf("build: %w", err)
	}
	secretArgs, err := ws.writeSecrets(o.Secrets)
	if err != nil {
		return BuildResult{}, fmt.Errorf("build: %w", err)
	}
	iidFile := filepath.Join(ws.dir, "iid")
	// A file left by an earlier build in the same WorkDir must not pass
	// for this one's image.
	if err := os.Remove(iidFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return BuildResult{}, fmt.Errorf("build: %w", err)
	}
	args := buildArgs(o, platform, ws, iidFile, secretArgs)

	var res BuildResult
	var step, message string
	tail := newRing(TailLines)
	code, err := e.run(ctx, ws, args, func(line string) {
		switch {
		case stepLine.MatchString(line):
			step = line
			res.Steps++
		case strings.HasPrefix(line, cacheLine):
			res.CachedSteps++
		case strings.HasPrefix(line, "Error: "):
			message = strings.TrimPrefix(line, "Error: ")
		}
		tail.add(line)
		if o.Output != nil {
			o.Output(line)
		}
	})
	if err != nil {
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return BuildResult{}, &BuildError{Step: step, Message: message, ExitCode: code, Tail: tail.lines()}
		}
		return BuildResult{}, fmt.Errorf("build: %w", err)
	}
	id, err := os.ReadFile(iidFile)
	if err != nil {
		return BuildResult{}, fmt.Errorf("build: buildah succeeded but wrote no image ID: %w", err)
	}
	res.ImageID = strings.TrimSpace(string(id))
	if res.ImageID == "" {
		return BuildResult{}, errors.New("build: buildah succeeded but wrote an empty image ID")
	}
	return res, nil
}

// buildArgs is buildah's command line after the global flags. Secrets and
// credentials appear in it only as the paths of files in WorkDir.
func buildArgs(o BuildOptions, p Platform, ws *workspace, iidFile string, secretArgs []string) []string {
	pull := o.Pull
	if pull == "" {
		pull = PullMissing
	}
	dockerfile := o.Dockerfile
	if dockerfile == "" {
		dockerfile = "Dockerfile"
	}
	if !filepath.IsAbs(dockerfile) {
		dockerfile = filepath.Join(o.Context, dockerfile)
	}
	args := []string{
		"build",
		"--isolation", "chroot",
		"--format", "oci",
		"--platform", p.String(),
		"--pull=" + string(pull),
		"--iidfile", iidFile,
		"--authfile", ws.authFile,
		"--signature-policy", ws.policyFile,
		"--file", dockerfile,
	}
	if o.Layers {
		// Without it a failed step's container stays in Storage, a whole
		// copy of the image on vfs. Builds without --layers remove it
		// anyway (and refuse the flag).
		args = append(args, "--layers", "--force-rm")
	}
	if o.Target != "" {
		args = append(args, "--target", o.Target)
	}
	for _, k := range sortedKeys(o.Args) {
		args = append(args, "--build-arg", k+"="+o.Args[k])
	}
	for _, k := range sortedKeys(o.Labels) {
		args = append(args, "--label", k+"="+o.Labels[k])
	}
	args = append(args, secretArgs...)
	if o.Tag != "" {
		args = append(args, "--tag", o.Tag)
	}
	return append(args, o.Context)
}

// PushOptions describe one push.
type PushOptions struct {
	Storage Storage
	// WorkDir is scratch space as in BuildOptions; a build's may be reused.
	WorkDir string
	// Image is the image in Storage: a name (BuildOptions.Tag) or an ID.
	Image string
	// Dest is where it goes, a containers-transports reference, e.g.
	// "docker://registry.example/org/app:tag".
	Dest string
	// Auth is a containers-auth.json document with the credentials for
	// Dest's registry.
	Auth []byte
	// Insecure are registry hosts reached over plain HTTP.
	Insecure []string
	// Output, if set, gets every line buildah prints, as in BuildOptions.
	Output func(line string)
}

// Push copies an image from Storage to o.Dest and returns the digest of the
// manifest it pushed ("sha256:...").
func (e *Engine) Push(ctx context.Context, o PushOptions) (string, error) {
	if err := o.Storage.check(); err != nil {
		return "", fmt.Errorf("push: %w", err)
	}
	if o.Image == "" || o.Dest == "" {
		return "", errors.New("push: image and destination must both be set")
	}
	ws, err := prepare(o.WorkDir, o.Storage, o.Auth, o.Insecure)
	if err != nil {
		return "", fmt.Errorf("push %s: %w", o.Dest, err)
	}
	digestFile := filepath.Join(ws.dir, "digest")
	if err := os.Remove(digestFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("push %s: %w", o.Dest, err)
	}
	args := []string{
		"push",
		"--authfile", ws.authFile,
		"--signature-policy", ws.policyFile,
		"--digestfile", digestFile,
		"--format", "oci",
		o.Image, o.Dest,
	}
	tail := newRing(TailLines)
	if _, err := e.run(ctx, ws, args, func(line string) {
		tail.add(line)
		if o.Output != nil {
			o.Output(line)
		}
	}); err != nil {
		return "", fmt.Errorf("push %s to %s: %w: %s", o.Image, o.Dest, err, strings.Join(tail.lines(), "\n"))
	}
	d, err := os.ReadFile(digestFile)
	if err != nil {
		return "", fmt.Errorf("push %s: buildah succeeded but wrote no digest: %w", o.Dest, err)
	}
	digest := strings.TrimSpace(string(d))
	if !strings.HasPrefix(digest, "sha256:") {
		return "", fmt.Errorf("push %s: buildah wrote digest %q", o.Dest, digest)
	}
	return digest, nil
}

// Remove removes an image from storage, with any containers using it. It
// is clean-up: an image that is not there is not an error.
func (e *Engine) Remove(ctx context.Context, s Storage, image string) error {
	if err := s.check(); err != nil {
		return fmt.Errorf("remove %s: %w", image, err)
	}
	ws, done, err := tempWorkspace(s)
	if err != nil {
		return fmt.Errorf("remove %s: %w", image, err)
	}
	defer done()
	tail := newRing(TailLines)
	if _, err := e.run(ctx, ws, []string{"rmi", "--force", image}, tail.add); err != nil {
		out := strings.Join(tail.lines(), "\n")
		if strings.Contains(out, "image not known") {
			return nil
		}
		return fmt.Errorf("remove %s: %w: %s", image, err, out)
	}
	return nil
}

// Wipe removes every container and image from s, leaving directories
// anyone may delete: vfs storage is made of full copies of each layer,
// some with read-only directories in them.
func (e *Engine) Wipe(ctx context.Context, s Storage) error {
	if err := s.check(); err != nil {
		return fmt.Errorf("wipe storage: %w", err)
	}
	ws, done, err := tempWorkspace(s)
	if err != nil {
		return fmt.Errorf("wipe storage: %w", err)
	}
	defer done()
	var errs []error
	for _, args := range [][]string{{"rm", "--all"}, {"rmi", "--all", "--force"}} {
		tail := newRing(TailLines)
		if _, err := e.run(ctx, ws, args, tail.add); err != nil {
			errs = append(errs, fmt.Errorf("buildah %s: %w: %s", args[0], err, strings.Join(tail.lines(), "\n")))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("wipe storage %s: %w", s.Root, err)
	}
	return nil
}

// run runs buildah with the global flags for ws, calls line with each line
// of its output, and returns its exit code. It returns once buildah has
// exited; when ctx ends first, buildah's process group gets SIGTERM, then
// SIGKILL after KillGrace, and the error wraps ctx.Err().
func (e *Engine) run(ctx context.Context, ws *workspace, args []string, line func(string)) (int, error) {
	if err := ctx.Err(); err != nil {
		return -1, fmt.Errorf("buildah %s: %w", args[0], err)
	}
	cmd := exec.Command(e.bin, append(ws.globalArgs(), args...)...)
	cmd.Env = ws.env()
	cmd.Dir = ws.dir
	// Its own process group: the RUN steps' processes are buildah's
	// children, and a cancel must reach them too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	pr, pw, err := os.Pipe()
	if err != nil {
		return -1, fmt.Errorf("buildah %s: %w", args[0], err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		return -1, fmt.Errorf("buildah %s: %w", args[0], err)
	}
	pw.Close()
	pgid := cmd.Process.Pid

	read := make(chan struct{})
	go func() {
		defer close(read)
		readLines(pr, line)
	}()

	exited := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-exited:
			return
		case <-ctx.Done():
		}
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		t := time.NewTimer(KillGrace)
		defer t.Stop()
		select {
		case <-exited:
		case <-t.C:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
		}
	}()
	werr := cmd.Wait()
	close(exited)
	<-stopped
	cancelled := ctx.Err()
	if cancelled != nil {
		// Whatever of the group outlived buildah itself.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	// A process that left the group can still hold the pipe open: do not
	// wait for it for ever.
	select {
	case <-read:
	case <-time.After(KillGrace):
		pr.Close()
		<-read
	}
	pr.Close()

	if cancelled != nil {
		return -1, fmt.Errorf("buildah %s: %w", args[0], cancelled)
	}
	if werr != nil {
		return cmd.ProcessState.ExitCode(), fmt.Errorf("buildah %s: %w", args[0], werr)
	}
	return 0, nil
}

// readLines calls line with each line read from r, without its line end;
// a line longer than MaxLine comes in MaxLine pieces.
func readLines(r io.Reader, line func(string)) {
	br := bufio.NewReaderSize(r, MaxLine)
	for {
		b, err := br.ReadSlice('\n')
		if len(b) > 0 {
			line(strings.TrimRight(string(b), "\r\n"))
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

// ring keeps the last n lines.
type ring struct {
	buf  []string
	next int
	full bool
}

func newRing(n int) *ring { return &ring{buf: make([]string, n)} }

func (r *ring) add(s string) {
	r.buf[r.next] = s
	r.next = (r.next + 1) % len(r.buf)
	if r.next == 0 {
		r.full = true
	}
}

func (r *ring) lines() []string {
	if !r.full {
		return slices.Clone(r.buf[:r.next])
	}
	return append(slices.Clone(r.buf[r.next:]), r.buf[:r.next]...)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
