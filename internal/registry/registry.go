// Package registry is how every target reaches the OCI image registry: an
// upstream distribution-API registry (Harbor, Distribution) reached as a
// robot account, or, when no URL is configured, go-containerregistry's
// registry served in-process with blobs and manifests kept on disk.
//
// Both are reached the same way: Transport is an http.RoundTripper that
// speaks to the registry at Base with the robot's credentials (for the
// registry-proxy's forwarding), and Resolve and Layer read images through it
// with go-containerregistry's client.
package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// ErrNotFound is wrapped when a repository, manifest or blob does not exist.
var ErrNotFound = errors.New("registry: not found")

// ErrNoPlatform is wrapped when an image index has no manifest for the
// asked architecture.
var ErrNoPlatform = errors.New("registry: no manifest for the platform")

// Config configures Open.
type Config struct {
	// URL is the upstream distribution-API registry (scheme and host, e.g.
	// https://harbor.example.com); "" serves the embedded registry.
	URL string
	// Username and Password are the upstream robot's credentials; it is
	// asked for them as it likes (token flow or basic). Empty: anonymous.
	Username, Password string
	// DataDir holds the embedded registry's blobs and manifests.
	DataDir string
	// Log defaults to slog.Default().
	Log *slog.Logger
}

// Registry reaches the image registry. It is safe for concurrent use.
type Registry struct {
	base *url.URL
	reg  name.Registry
	rt   http.RoundTripper
	emb  *embedded
	log  *slog.Logger
}

// embeddedHost names the in-process registry in URLs; its transport never
// dials it.
const embeddedHost = "registry.embedded.invalid"

// Open reaches the upstream registry (pinging it and, when it asks for
// tokens, fetching one, so bad credentials fail here) or opens the embedded
// one under DataDir.
func Open(ctx context.Context, cfg Config) (*Registry, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	r := &Registry{log: cfg.Log}
	if cfg.URL == "" {
		if cfg.DataDir == "" {
			return nil, errors.New("registry: the embedded registry needs a data directory")
		}
		emb, err := openEmbedded(ctx, cfg.DataDir, cfg.Log)
		if err != nil {
			return nil, err
		}
		r.emb = emb
		r.base = &url.URL{Scheme: "http", Host: embeddedHost}
		r.rt = emb.transport()
	} else {
		u, err := url.Parse(cfg.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("registry: URL %q must be http(s)://host[:port]", cfg.URL)
		}
		if strings.Trim(u.Path, "/") != "" {
			return nil, fmt.Errorf("registry: URL %q has a path; a distribution registry serves /v2/ at its root", cfg.URL)
		}
		r.base = &url.URL{Scheme: u.Scheme, Host: u.Host}
		var auth authn.Authenticator = authn.Anonymous
		if cfg.Username != "" || cfg.Password != "" {
			auth = &authn.Basic{Username: cfg.Username, Password: cfg.Password}
		}
		rob, err := newRobot(ctx, r.base, auth)
		if err != nil {
			return nil, err
		}
		r.rt = rob
	}
	opts := []name.Option{}
	if r.base.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(r.base.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	r.reg = reg
	return r, nil
}

// Embedded reports whether this is the in-process registry.
func (r *Registry) Embedded() bool { return r.emb != nil }

// Close releases the embedded registry's files; upload sessions in flight
// are abandoned.
func (r *Registry) Close() error {
	if r.emb != nil {
		return r.emb.close()
	}
	return nil
}

// Transport reaches the registry at Base as the robot: it adds whatever the
// registry asks for (a token of the request's repository scope, or basic
// credentials). Requests must name Base's scheme and host.
func (r *Registry) Transport() http.RoundTripper { return r.rt }

// Base is the registry's URL, scheme and host only.
func (r *Registry) Base() *url.URL { u := *r.base; return &u }

// Image is one platform's image of a repository.
type Image struct {
	// Repo and Digest are as asked.
	Repo, Digest string
	// Manifest is the digest of the platform's image manifest: Digest's
	// own unless Digest names an index.
	Manifest v1.Hash
	// Index tells whether Digest names an image index.
	Index bool
	// Config is the digest of the image's config blob.
	Config v1.Hash
	Layers []Layer
	// Size is the sum of the layers' sizes.
	Size int64
}

// Layer is one layer of an Image.
type Layer struct {
	Digest, DiffID v1.Hash
	Size           int64
	MediaType      types.MediaType
}

// platforms maps Flock's architecture names to OCI platforms.
var platforms = map[string]v1.Platform{
	"amd64":   {OS: "linux", Architecture: "amd64"},
	"arm64":   {OS: "linux", Architecture: "arm64"},
	"armv7":   {OS: "linux", Architecture: "arm", Variant: "v7"},
	"armv6":   {OS: "linux", Architecture: "arm", Variant: "v6"},
	"i386":    {OS: "linux", Architecture: "386"},
	"riscv64": {OS: "linux", Architecture: "riscv64"},
}

// Platform is the OCI platform of a Flock architecture (amd64, arm64, armv7,
// armv6, i386, riscv64).
func Platform(arch string) (v1.Platform, bool) {
	p, ok := platforms[arch]
	return p, ok
}

func variantSuffix(v string) string {
	if v == "" {
		return ""
	}
	return "/" + v
}

// matches reports whether an index entry's platform is want's. arm64's
// variant v8 is implied, so an entry may name it or not.
func matches(got *v1.Platform, want v1.Platform) bool {
	if got == nil || got.OS != want.OS || got.Architecture != want.Architecture {
		return false
	}
	if got.Variant == want.Variant {
		return true
	}
	return want.Architecture == "arm64" && want.Variant == "" && got.Variant == "v8"
}

// repositoryName is the distribution spec's repository name grammar.
var repositoryName = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$`)

// ValidRepository reports whether s is a repository name by the
// distribution spec (at most 255 characters).
func ValidRepository(s string) bool { return len(s) <= 255 && repositoryName.MatchString(s) }

func (r *Registry) remoteOptions(ctx context.Context) []remote.Option {
	return []remote.Option{remote.WithContext(ctx), remote.WithTransport(r.rt), remote.WithAuth(authn.Anonymous)}
}

func (r *Registry) repository(repo string) (name.Repository, error) {
	if !ValidRepository(repo) {
		return name.Repository{}, fmt.Errorf("registry: %q is not a repository name", repo)
	}
	n, err := name.NewRepository(r.reg.RegistryStr()+"/"+repo, name.StrictValidation)
	if err != nil {
		return name.Repository{}, fmt.Errorf("registry: repository %q: %w", repo, err)
	}
	n.Registry = r.reg // keeps Insecure
	return n, nil
}

// Resolve reads repo@digest and, when it is an image index, picks the
// manifest for arch (a Flock architecture: amd64, arm64, armv7, armv6,
// i386, riscv64). Errors wrap ErrNotFound or ErrNoPlatform when so.
func (r *Registry) Resolve(ctx context.Context, repo, digest, arch string) (Image, error) {
	n, err := r.repository(repo)
	if err != nil {
		return Image{}, err
	}
	h, err := v1.NewHash(digest)
	if err != nil {
		return Image{}, fmt.Errorf("registry: digest %q: %w", digest, err)
	}
	desc, err := remote.Get(n.Digest(h.String()), r.remoteOptions(ctx)...)
	if err != nil {
		return Image{}, r.wrap(fmt.Sprintf("resolve %s@%s", repo, digest), err)
	}
	out := Image{Repo: repo, Digest: digest, Manifest: h}
	var img v1.Image
	if desc.MediaType.IsIndex() {
		out.Index = true
		want, ok := Platform(arch)
		if !ok {
			return Image{}, fmt.Errorf("%w: unknown architecture %q", ErrNoPlatform, arch)
		}
		idx, err := desc.ImageIndex()
		if err != nil {
			return Image{}, r.wrap("read index "+digest, err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			return Image{}, r.wrap("read index "+digest, err)
		}
		found := false
		for _, m := range im.Manifests {
			if m.MediaType.IsImage() && matches(m.Platform, want) {
				out.Manifest, found = m.Digest, true
				break
			}
		}
		if !found {
			return Image{}, fmt.Errorf("%w: %s@%s has no linux/%s manifest", ErrNoPlatform, repo, digest, arch)
		}
		if img, err = idx.Image(out.Manifest); err != nil {
			return Image{}, r.wrap("read manifest "+out.Manifest.String(), err)
		}
	} else {
		if img, err = desc.Image(); err != nil {
			return Image{}, r.wrap("read manifest "+digest, err)
		}
	}
	m, err := img.Manifest()
	if err != nil {
		return Image{}, r.wrap("read manifest "+out.Manifest.String(), err)
	}
	out.Config = m.Config.Digest
	cf, err := img.ConfigFile()
	if err != nil {
		return Image{}, r.wrap("read config "+m.Config.Digest.String(), err)
	}
	if !out.Index {
		// A lone manifest's platform is its config's. A config that names
		// none (only hand-made images lack it) cannot be told apart, and
		// is taken at its word.
		want, ok := Platform(arch)
		if !ok {
			return Image{}, fmt.Errorf("%w: unknown architecture %q", ErrNoPlatform, arch)
		}
		if cf.Architecture != "" && !matches(&v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant}, want) {
			return Image{}, fmt.Errorf("%w: %s@%s is for %s/%s%s, not linux/%s", ErrNoPlatform, repo, digest,
				cf.OS, cf.Architecture, variantSuffix(cf.Variant), arch)
		}
	}
	for i, l := range m.Layers {
		layer := Layer{Digest: l.Digest, Size: l.Size, MediaType: l.MediaType}
		if i < len(cf.RootFS.DiffIDs) {
			layer.DiffID = cf.RootFS.DiffIDs[i]
		}
		out.Layers = append(out.Layers, layer)
		out.Size += l.Size
	}
	return out, nil
}

// Layer opens one layer blob of repo: Compressed streams it as stored,
// Uncompressed decompresses it. It fails with ErrNotFound when the
// repository has no such blob.
func (r *Registry) Layer(ctx context.Context, repo string, digest v1.Hash) (v1.Layer, error) {
	n, err := r.repository(repo)
	if err != nil {
		return nil, err
	}
	// remote.Layer is lazy: ask first, so a missing blob is an error here.
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, r.base.String()+"/v2/"+n.RepositoryStr()+"/blobs/"+digest.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := r.rt.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("registry: layer %s@%s: %w", repo, digest, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("%w: layer %s@%s", ErrNotFound, repo, digest)
	case resp.StatusCode >= 300:
		return nil, fmt.Errorf("registry: layer %s@%s: HEAD answered %s", repo, digest, resp.Status)
	}
	l, err := remote.Layer(n.Digest(digest.String()), r.remoteOptions(ctx)...)
	if err != nil {
		return nil, r.wrap(fmt.Sprintf("layer %s@%s", repo, digest), err)
	}
	return l, nil
}

// Manifest reads a manifest of repo by tag or digest as stored: its bytes,
// media type and digest.
func (r *Registry) Manifest(ctx context.Context, repo, ref string) ([]byte, types.MediaType, v1.Hash, error) {
	n, err := r.repository(repo)
	if err != nil {
		return nil, "", v1.Hash{}, err
	}
	var nr name.Reference
	if strings.Contains(ref, ":") {
		nr = n.Digest(ref)
	} else {
		nr = n.Tag(ref)
	}
	desc, err := remote.Get(nr, r.remoteOptions(ctx)...)
	if err != nil {
		return nil, "", v1.Hash{}, r.wrap(fmt.Sprintf("manifest %s:%s", repo, ref), err)
	}
	return desc.Manifest, desc.MediaType, desc.Digest, nil
}

// wrap marks the registry's not-found answers with ErrNotFound.
func (r *Registry) wrap(what string, err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		if te.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%w: %s: %w", ErrNotFound, what, err)
		}
		for _, d := range te.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
				return fmt.Errorf("%w: %s: %w", ErrNotFound, what, err)
			}
		}
	}
	return fmt.Errorf("registry: %s: %w", what, err)
}
