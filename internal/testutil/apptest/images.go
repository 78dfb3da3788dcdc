package apptest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// RegistryHost is the registry's host in image references: the public
// URL's, which nothing serves.
const RegistryHost = "flock.test:8080"

// RegistryTransport reaches the server for RegistryHost, as DNS would in a
// deployment, so engines' token flow (whose realm is on the public URL)
// works against the test server.
func (s *Server) RegistryTransport() http.RoundTripper {
	u, _ := url.Parse(s.URL)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == RegistryHost {
			addr = u.Host
		}
		return dial(ctx, network, addr)
	}
	return tr
}

// Image is an image pushed to the server's registry.
type Image struct {
	Ref    string // RegistryHost/repo, as releases name it
	Repo   string
	Digest string
}

// PushImage pushes a small random image for arch (amd64 when empty) to
// repo (<org slug>/<fleet slug>/<service>) through the registry-proxy,
// logged in with token (a user token or an org API key).
func (s *Server) PushImage(t testing.TB, token, repo, arch string) Image {
	t.Helper()
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	if arch == "" {
		arch = "amd64"
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	if v, ok := strings.CutPrefix(arch, "armv"); ok {
		cf.Architecture, cf.Variant = "arm", "v"+v
	}
	if arch == "i386" {
		cf.Architecture = "386"
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.Push(token, repo, img)
	if err != nil {
		t.Fatal(err)
	}
	return Image{Ref: RegistryHost + "/" + repo, Repo: repo, Digest: d}
}

// Push pushes img to repo through the registry-proxy and returns its
// digest; any goroutine may call it.
func (s *Server) Push(token, repo string, img v1.Image) (string, error) {
	ref, err := name.NewTag(RegistryHost+"/"+repo+":latest", name.Insecure)
	if err != nil {
		return "", err
	}
	// A transport per push, closed after: a connection the client dialled
	// but never used would hold the server's drain at shutdown for 5 s.
	tr := s.RegistryTransport().(*http.Transport)
	defer tr.CloseIdleConnections()
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "flock", Password: token}),
		remote.WithTransport(tr)); err != nil {
		return "", fmt.Errorf("push %s: %w", repo, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return d.String(), nil
}
