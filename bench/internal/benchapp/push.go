package benchapp

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Image is an image pushed to the platform registry.
type Image struct {
	Ref    string // host/repo, as releases name it
	Digest string
}

// PushImage pushes a small random linux image for arch (amd64 when empty)
// to repo (<org slug>/<fleet slug>/<service>) through the registry-proxy
// of the flock-api process at base (its http:// address), logged in with
// token (a user token or an org API key of a developer or higher).
//
// Releases name images by the registry's public host, which for a process
// without --registry-host is its public URL's host; nothing need listen
// there: the push dials base for it, as DNS would resolve it in a
// deployment, so the token flow (whose realm is on the public URL) reaches
// the process too.
func PushImage(ctx context.Context, base, publicURL, token, repo, arch string) (Image, error) {
	pub, err := url.Parse(publicURL)
	if err != nil || pub.Host == "" {
		return Image{}, fmt.Errorf("public URL %q: want scheme://host[:port]", publicURL)
	}
	srv, err := url.Parse(base)
	if err != nil || srv.Host == "" {
		return Image{}, fmt.Errorf("server URL %q: want http://host:port", base)
	}
	host := pub.Host
	dialed := host // what the client dials for the public host
	if pub.Port() == "" {
		port := "80"
		if pub.Scheme == "https" {
			port = "443"
		}
		dialed = net.JoinHostPort(pub.Hostname(), port)
	}

	img, err := random.Image(512, 1)
	if err != nil {
		return Image{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return Image{}, err
	}
	cf = cf.DeepCopy()
	if arch == "" {
		arch = "amd64"
	}
	cf.OS, cf.Architecture = "linux", arch
	if v, ok := strings.CutPrefix(arch, "armv"); ok {
		cf.Architecture, cf.Variant = "arm", "v"+v
	}
	if arch == "i386" {
		cf.Architecture = "386"
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return Image{}, err
	}

	ref, err := name.NewTag(host+"/"+repo+":latest", name.Insecure)
	if err != nil {
		return Image{}, err
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	dial := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == dialed {
			addr = srv.Host
		}
		return dial(ctx, network, addr)
	}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: "flock", Password: token}),
		remote.WithTransport(tr), remote.WithContext(ctx)); err != nil {
		return Image{}, fmt.Errorf("push %s: %w", repo, err)
	}
	d, err := img.Digest()
	if err != nil {
		return Image{}, err
	}
	return Image{Ref: host + "/" + repo, Digest: d.String()}, nil
}
