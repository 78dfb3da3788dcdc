// Package oidcverify checks the access tokens people bring from an OpenID
// Connect issuer (Zitadel in production, the dev provider in dev mode). The
// API never issues tokens to humans; it only verifies them, offline against
// the issuer's published keys, so the hot path costs one signature check and
// no network round trip.
package oidcverify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/client"
	"github.com/zitadel/oidc/v3/pkg/client/rp"
	"github.com/zitadel/oidc/v3/pkg/oidc"
)

// Config says which issuer to trust and for which audience.
type Config struct {
	// Issuer is compared byte for byte with the iss claim and the discovery
	// document's issuer, as OpenID Connect requires, so write it exactly as the
	// issuer does (Zitadel: no trailing slash), e.g. https://id.example.com.
	Issuer string
	// Audience must be one of the token's aud values (Zitadel: the project id).
	Audience string
	// HTTPClient fetches discovery, keys and userinfo; nil means a client
	// with a 10s timeout.
	HTTPClient *http.Client
	// KeyCacheMaxAge bounds how long fetched keys are trusted: after it, the
	// key set is fetched again, so a key the issuer removed stops verifying.
	// Zero means 10m.
	KeyCacheMaxAge time.Duration
	// ClockSkew is the tolerance applied to exp, nbf and iat. Zero means 30s.
	ClockSkew time.Duration
}

// Claims is what the API needs to know about the person behind a token.
type Claims struct {
	Issuer        string
	Subject       string
	Email         string
	Name          string
	EmailVerified bool
	Expiry        time.Time
}

var (
	// ErrInvalidToken is wrapped by every error that is the token's fault;
	// the message after it names the reason. The caller answers 401.
	ErrInvalidToken = errors.New("invalid token")
	// ErrUnavailable is wrapped when the issuer could not be asked (discovery,
	// keys or userinfo failed to answer): the token was not judged, so the
	// caller should not answer 401 as if it were bad.
	ErrUnavailable = errors.New("identity provider unavailable")
)

const (
	defaultHTTPTimeout    = 10 * time.Second
	defaultKeyCacheMaxAge = 10 * time.Minute
	defaultClockSkew      = 30 * time.Second
	maxUserinfoBody       = 1 << 20
)

// supportedAlgs are the signature algorithms accepted when the issuer
// advertises them. Anything else (none, HMAC) is refused before a key is
// looked at.
var supportedAlgs = []string{string(jose.RS256), string(jose.ES256), string(jose.EdDSA)}

// Verifier verifies access tokens of one issuer. It is safe for concurrent use.
type Verifier struct {
	cfg        Config
	httpClient *http.Client
	keysClient *http.Client

	// issuer holds the discovery result once it succeeded; discoverMu keeps
	// concurrent first requests from each fetching it.
	issuer     atomic.Pointer[discovered]
	discoverMu sync.Mutex
}

type discovered struct {
	userinfoURL string
	algs        []string
	keys        *agingKeySet
}

// New checks cfg and fills in defaults. It does no network I/O: discovery
// happens on first use, so the API can start while the issuer is down.
func New(cfg Config) (*Verifier, error) {
	u, err := url.Parse(cfg.Issuer)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("oidcverify: issuer %q must be an absolute http(s) URL", cfg.Issuer)
	}
	if cfg.Audience == "" {
		return nil, errors.New("oidcverify: audience is required")
	}
	if cfg.KeyCacheMaxAge < 0 || cfg.ClockSkew < 0 {
		return nil, errors.New("oidcverify: key cache max age and clock skew must not be negative")
	}
	if cfg.KeyCacheMaxAge == 0 {
		cfg.KeyCacheMaxAge = defaultKeyCacheMaxAge
	}
	if cfg.ClockSkew == 0 {
		cfg.ClockSkew = defaultClockSkew
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: defaultHTTPTimeout}
	}
	// The key set fetches through zitadel's code, which reports an unreachable
	// issuer and a refused key alike; marking transport failures here is what
	// lets Verify tell "issuer down" from "unknown key".
	kc := *hc
	base := kc.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	kc.Transport = unavailableTransport{base: base}
	return &Verifier{cfg: cfg, httpClient: hc, keysClient: &kc}, nil
}

// Ready reports whether discovery has succeeded, fetching it if it has not
// yet. Once it has, Ready stays true without asking the issuer again: cached
// keys keep verifying through a short issuer outage, and taking every replica
// out of the load balancer at once would turn that into a full outage.
func (v *Verifier) Ready(ctx context.Context) error {
	_, err := v.discover(ctx)
	return err
}

// Verify checks token's signature, issuer, audience and validity period and
// returns who it belongs to. Failures that are the token's fault wrap
// ErrInvalidToken; failures to reach the issuer wrap ErrUnavailable.
func (v *Verifier) Verify(ctx context.Context, token string) (*Claims, error) {
	var c oidc.AccessTokenClaims
	payload, err := oidc.ParseToken(token, &c)
	if err != nil {
		return nil, invalid("malformed", err)
	}
	// Claims are checked before the signature because they are cheap and need
	// no network; a forged token fails either way.
	if err := v.checkClaims(&c, time.Now()); err != nil {
		return nil, err
	}
	d, err := v.discover(ctx)
	if err != nil {
		return nil, err
	}
	if err := oidc.CheckSignature(ctx, token, payload, &c, d.algs, d.keys); err != nil {
		return nil, signatureError(ctx, err)
	}

	out := &Claims{
		Issuer:        c.Issuer,
		Subject:       c.Subject,
		Email:         stringClaim(c.Claims, "email"),
		Name:          stringClaim(c.Claims, "name"),
		EmailVerified: boolClaim(c.Claims, "email_verified"),
		Expiry:        c.GetExpiration(),
	}
	if out.Email == "" {
		// Zitadel leaves profile claims out of access tokens unless the project
		// asserts them; the userinfo endpoint always has them.
		if err := v.userinfo(ctx, d, token, out); err != nil {
			return nil, err
		}
	}
	if out.Email == "" {
		return nil, invalid("token carries no email", nil)
	}
	return out, nil
}

func (v *Verifier) checkClaims(c *oidc.AccessTokenClaims, now time.Time) error {
	skew := v.cfg.ClockSkew
	switch {
	case c.Issuer != v.cfg.Issuer:
		return invalid(fmt.Sprintf("wrong issuer %q", c.Issuer), nil)
	case !slices.Contains(c.Audience, v.cfg.Audience):
		return invalid(fmt.Sprintf("wrong audience %q", []string(c.Audience)), nil)
	case c.Subject == "":
		return invalid("malformed: no subject", nil)
	case c.Expiration == 0:
		return invalid("malformed: no expiry", nil)
	case !now.Add(-skew).Before(c.GetExpiration()):
		return invalid("expired at "+c.GetExpiration().UTC().Format(time.RFC3339), nil)
	case c.NotBefore != 0 && now.Add(skew).Before(c.NotBefore.AsTime()):
		return invalid("not valid before "+c.NotBefore.AsTime().UTC().Format(time.RFC3339), nil)
	case c.IssuedAt != 0 && now.Add(skew).Before(c.GetIssuedAt()):
		return invalid("issued in the future at "+c.GetIssuedAt().UTC().Format(time.RFC3339), nil)
	}
	return nil
}

// signatureError sorts what oidc.CheckSignature returned into the token's
// fault and the issuer's.
func signatureError(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("oidcverify: verify signature: %w", ctx.Err())
	case errors.Is(err, ErrUnavailable):
		return fmt.Errorf("oidcverify: fetch signing keys: %w", err)
	case errors.Is(err, oidc.ErrKeyNone), errors.Is(err, oidc.ErrKeyMultiple):
		// The detail adds nothing a client could use.
		return invalid("unknown key", nil)
	case errors.Is(err, oidc.ErrSignatureUnsupportedAlg):
		return invalid("unsupported signature algorithm", nil)
	case errors.Is(err, oidc.ErrParse), errors.Is(err, oidc.ErrSignatureMissing), errors.Is(err, oidc.ErrSignatureMultiple):
		return invalid("malformed", err)
	default:
		return invalid("bad signature", nil)
	}
}

// discover returns the cached discovery result or fetches it. A failure is
// not cached, so the next call tries again.
func (v *Verifier) discover(ctx context.Context) (*discovered, error) {
	if d := v.issuer.Load(); d != nil {
		return d, nil
	}
	v.discoverMu.Lock()
	defer v.discoverMu.Unlock()
	if d := v.issuer.Load(); d != nil {
		return d, nil
	}
	doc, err := client.Discover(ctx, v.cfg.Issuer, v.httpClient)
	if err != nil {
		return nil, fmt.Errorf("oidcverify: discover %s: %w: %w", v.cfg.Issuer, ErrUnavailable, err)
	}
	if doc.JwksURI == "" {
		return nil, fmt.Errorf("oidcverify: discover %s: %w: no jwks_uri", v.cfg.Issuer, ErrUnavailable)
	}
	// OpenID Connect makes RS256 mandatory, so an issuer that lists nothing
	// signs with it.
	advertised := doc.IDTokenSigningAlgValuesSupported
	if len(advertised) == 0 {
		advertised = []string{string(jose.RS256)}
	}
	var algs []string
	for _, a := range advertised {
		if slices.Contains(supportedAlgs, a) {
			algs = append(algs, a)
		}
	}
	if len(algs) == 0 {
		return nil, fmt.Errorf("oidcverify: discover %s: issuer signs with %v, none of %v", v.cfg.Issuer, advertised, supportedAlgs)
	}
	d := &discovered{
		userinfoURL: doc.UserinfoEndpoint,
		algs:        algs,
		keys:        &agingKeySet{client: v.keysClient, url: doc.JwksURI, maxAge: v.cfg.KeyCacheMaxAge},
	}
	v.issuer.Store(d)
	return d, nil
}

// userinfo fills the profile from the issuer's userinfo endpoint. The token's
// signature was already checked, so the issuer refusing it now means it was
// revoked or the session ended.
func (v *Verifier) userinfo(ctx context.Context, d *discovered, token string, out *Claims) error {
	if d.userinfoURL == "" {
		return invalid("token carries no email", nil)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.userinfoURL, nil)
	if err != nil {
		return fmt.Errorf("oidcverify: userinfo request: %w", err)
	}
	req.Header.Set("Authorization", oidc.PrefixBearer+token)
	req.Header.Set("Accept", "application/json")
	resp, err := v.httpClient.Do(req)
	if err != nil {
		return fmt.Errorf("oidcverify: userinfo: %w: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxUserinfoBody))
	if err != nil {
		return fmt.Errorf("oidcverify: userinfo: %w: read body: %w", ErrUnavailable, err)
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return invalid("userinfo refused the token: "+resp.Status, nil)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("oidcverify: userinfo: %w: %s", ErrUnavailable, resp.Status)
	}
	var info oidc.UserInfo
	if err := json.Unmarshal(body, &info); err != nil {
		return fmt.Errorf("oidcverify: userinfo: %w: decode: %w", ErrUnavailable, err)
	}
	// OpenID Connect Core 5.3.2: a userinfo answer for another subject must
	// not be used.
	if info.Subject != out.Subject {
		return invalid(fmt.Sprintf("userinfo subject %q does not match token subject", info.Subject), nil)
	}
	out.Email = info.Email
	out.EmailVerified = bool(info.EmailVerified)
	if out.Name == "" {
		out.Name = info.Name
	}
	return nil
}

func invalid(reason string, cause error) error {
	if cause != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalidToken, reason, cause)
	}
	return fmt.Errorf("%w: %s", ErrInvalidToken, reason)
}

func stringClaim(m map[string]any, name string) string {
	s, _ := m[name].(string)
	return s
}

// boolClaim accepts "true" as well, as some issuers (AWS Cognito) send it.
func boolClaim(m map[string]any, name string) bool {
	switch b := m[name].(type) {
	case bool:
		return b
	case string:
		return b == "true"
	}
	return false
}

// agingKeySet is zitadel's remote key set, replaced wholesale once it is
// older than maxAge. The remote set re-fetches only on an unknown key id, so
// on its own it would keep trusting a key the issuer has since removed.
type agingKeySet struct {
	client *http.Client
	url    string
	maxAge time.Duration
	cur    atomic.Pointer[keySetGeneration]
}

type keySetGeneration struct {
	set  oidc.KeySet
	born time.Time
}

func (k *agingKeySet) VerifySignature(ctx context.Context, jws *jose.JSONWebSignature) ([]byte, error) {
	return k.current().VerifySignature(ctx, jws)
}

func (k *agingKeySet) current() oidc.KeySet {
	g := k.cur.Load()
	if g != nil && time.Since(g.born) < k.maxAge {
		return g.set
	}
	next := &keySetGeneration{set: rp.NewRemoteKeySet(k.client, k.url), born: time.Now()}
	if k.cur.CompareAndSwap(g, next) {
		return next.set
	}
	// Another request replaced it first; use theirs so only one fetch happens.
	return k.cur.Load().set
}

// unavailableTransport marks every way the key set fetch can fail on the
// issuer's side with ErrUnavailable; zitadel wraps errors with %w, so the mark
// survives up to Verify.
type unavailableTransport struct {
	base http.RoundTripper
}

func (t unavailableTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if resp.StatusCode >= 400 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		resp.Body.Close()
		return nil, fmt.Errorf("%w: %s answered %s", ErrUnavailable, req.URL.Redacted(), resp.Status)
	}
	return resp, nil
}
