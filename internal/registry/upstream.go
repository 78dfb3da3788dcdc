package registry

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

const (
	// robotTokens bounds the tokens kept, one per scope set.
	robotTokens = 4096
	// defaultTokenTTL is the distribution spec's default when a token
	// server names no expires_in.
	defaultTokenTTL = 60 * time.Second
)

// robot reaches an upstream registry as the robot account. Each request
// gets a token for exactly the scopes it needs (its repository, pull or
// push, and a mount's source), cached until shortly before it expires, so
// a request is never sent with a token the upstream will refuse for scope
// and never needs a retry, which a streamed body could not make.
type robot struct {
	base  *url.URL
	reg   name.Registry
	auth  authn.Authenticator
	inner http.RoundTripper

	mu        sync.Mutex
	challenge *transport.Challenge

	tokens *lru.Cache[string, robotToken]
	flight singleflight.Group
	now    func() time.Time
}

type robotToken struct {
	value   string
	refresh time.Time
}

func newRobot(ctx context.Context, base *url.URL, auth authn.Authenticator) (*robot, error) {
	opts := []name.Option{}
	if base.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(base.Host, opts...)
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	cache, _ := lru.New[string, robotToken](robotTokens)
	inner := http.DefaultTransport.(*http.Transport).Clone()
	inner.MaxIdleConnsPerHost = 64
	r := &robot{base: base, reg: reg, auth: auth, inner: inner, tokens: cache, now: time.Now}
	ch, err := r.ping(ctx)
	if err != nil {
		return nil, err
	}
	// A token with no scope proves the robot's credentials.
	if strings.EqualFold(ch.Scheme, "bearer") {
		if _, err := r.token(ctx, nil); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// ping learns how the upstream wants to be authenticated, once.
func (r *robot) ping(ctx context.Context) (*transport.Challenge, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.challenge != nil {
		return r.challenge, nil
	}
	ch, err := transport.Ping(ctx, r.reg, r.inner)
	if err != nil {
		return nil, fmt.Errorf("registry: reach %s: %w", r.base, err)
	}
	// The scheme the ping succeeded with is the one configured.
	if ch.Insecure != (r.base.Scheme == "http") {
		return nil, fmt.Errorf("registry: %s answers only over %s", r.base.Host, map[bool]string{true: "http", false: "https"}[ch.Insecure])
	}
	r.challenge = ch
	return ch, nil
}

// token returns a token for scopes, fetching one when none is cached or the
// cached one is near its end.
func (r *robot) token(ctx context.Context, scopes []string) (string, error) {
	key := strings.Join(scopes, " ")
	if t, ok := r.tokens.Get(key); ok && r.now().Before(t.refresh) {
		return t.value, nil
	}
	v, err, _ := r.flight.Do(key, func() (any, error) {
		if t, ok := r.tokens.Get(key); ok && r.now().Before(t.refresh) {
			return t.value, nil
		}
		ch, err := r.ping(ctx)
		if err != nil {
			return "", err
		}
		start := r.now()
		tok, err := transport.Exchange(ctx, r.reg, r.auth, r.inner, scopes, ch)
		if err != nil {
			return "", fmt.Errorf("registry: robot token for %q: %w", key, err)
		}
		value := tok.Token
		if value == "" {
			value = tok.AccessToken
		}
		ttl := time.Duration(tok.ExpiresIn) * time.Second
		if ttl <= 0 {
			ttl = defaultTokenTTL
		}
		// Refreshed at four fifths of its life: a request sent with it
		// still has a fifth (at least 12 s) to reach the upstream.
		r.tokens.Add(key, robotToken{value: value, refresh: start.Add(ttl * 4 / 5)})
		return value, nil
	})
	if err != nil {
		return "", err
	}
	return v.(string), nil
}

func (r *robot) forget(scopes []string) { r.tokens.Remove(strings.Join(scopes, " ")) }

// RoundTrip sends req (which must name the upstream) with the robot's
// credentials for what req does.
func (r *robot) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != r.base.Host || req.URL.Scheme != r.base.Scheme {
		closeBody(req)
		return nil, fmt.Errorf("registry: robot transport asked to reach %s://%s, not the registry", req.URL.Scheme, req.URL.Host)
	}
	ch, err := r.ping(req.Context())
	if err != nil {
		closeBody(req)
		return nil, err
	}
	switch strings.ToLower(ch.Scheme) {
	case "bearer":
	case "basic":
		cfg, err := r.auth.Authorization()
		if err != nil {
			closeBody(req)
			return nil, err
		}
		out := req.Clone(req.Context())
		if cfg.Username != "" || cfg.Password != "" {
			out.SetBasicAuth(cfg.Username, cfg.Password)
		}
		return r.inner.RoundTrip(out)
	default:
		return r.inner.RoundTrip(req)
	}
	scopes := Scopes(req.Method, req.URL)
	tok, err := r.token(req.Context(), scopes)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	out := req.Clone(req.Context())
	out.Header.Set("Authorization", "Bearer "+tok)
	resp, err := r.inner.RoundTrip(out)
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	// Refused before its time (revoked, or the upstream restarted with new
	// keys): fetch another, and retry when the body can be sent again.
	r.forget(scopes)
	if req.Body != nil && req.Body != http.NoBody && req.GetBody == nil {
		return resp, nil
	}
	tok, err = r.token(req.Context(), scopes)
	if err != nil {
		return resp, nil
	}
	retry := req.Clone(req.Context())
	if req.GetBody != nil {
		if retry.Body, err = req.GetBody(); err != nil {
			return resp, nil
		}
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	retry.Header.Set("Authorization", "Bearer "+tok)
	return r.inner.RoundTrip(retry)
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// Scopes are the token scopes a distribution API request needs: pull on its
// repository to read, pull and push to write, delete to delete, and pull on
// a cross-repository mount's source. None for /v2/ itself.
func Scopes(method string, u *url.URL) []string {
	repo, _, _, ok := Route(u.Path)
	if !ok {
		return nil
	}
	var scopes []string
	switch method {
	case http.MethodGet, http.MethodHead:
		scopes = []string{"repository:" + repo + ":pull"}
	case http.MethodDelete:
		scopes = []string{"repository:" + repo + ":delete"}
	default:
		scopes = []string{"repository:" + repo + ":pull,push"}
	}
	if from := u.Query().Get("from"); from != "" && u.Query().Get("mount") != "" && from != repo && ValidRepository(from) {
		scopes = append(scopes, "repository:"+from+":pull")
	}
	return scopes
}

// Route splits a distribution API path: /v2/<repo>/<kind>/<rest> with kind
// one of manifests, blobs, tags, referrers (rest is the reference, digest,
// "uploads/[<id>]" or "list"). ok is false for /v2/, the catalog and
// anything else.
func Route(path string) (repo, kind, rest string, ok bool) {
	p, found := strings.CutPrefix(path, "/v2/")
	if !found {
		return "", "", "", false
	}
	parts := strings.Split(p, "/")
	// The repository name may itself contain "blobs" or "manifests"
	// components; the kind is the last that leaves a valid shape.
	for i := len(parts) - 2; i >= 1; i-- {
		k := parts[i]
		if !slices.Contains([]string{"manifests", "blobs", "tags", "referrers"}, k) {
			continue
		}
		repo, rest = strings.Join(parts[:i], "/"), strings.Join(parts[i+1:], "/")
		if !ValidRepository(repo) {
			return "", "", "", false
		}
		switch {
		case k == "blobs" && (rest == "uploads" || strings.HasPrefix(rest, "uploads/")):
			if strings.Count(rest, "/") > 1 {
				continue
			}
		case k == "tags" && rest != "list":
			continue
		case strings.Contains(rest, "/") || rest == "":
			continue
		}
		return repo, k, rest, true
	}
	return "", "", "", false
}
