package registryproxy

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/devicetoken"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/registry"
)

// TokenType is the JWT typ of registry tokens: signed with the device-token
// keys, never accepted as a device token, nor a device token as one.
const TokenType = "flock-registry+jwt"

// TokenTTL is how long a registry token is valid.
const TokenTTL = 5 * time.Minute

// The actions of the repository resource type.
const (
	actionPull   = "pull"
	actionPush   = "push"
	actionDelete = "delete"
)

// tokenClaims is a registry token's payload: the distribution token spec's
// access list, with sub naming the caller (auth.Principal.Name).
type tokenClaims struct {
	jwt.Claims
	Access []accessEntry `json:"access"`
}

type accessEntry struct {
	Type    string   `json:"type"`
	Name    string   `json:"name"`
	Actions []string `json:"actions"`
}

// allows reports whether the token grants action on repo. A delete is
// allowed by push as well: go-containerregistry deletes with a push token.
func (c *tokenClaims) allows(repo, action string) bool {
	for _, a := range c.Access {
		if a.Type != "repository" || a.Name != repo {
			continue
		}
		if slices.Contains(a.Actions, action) || (action == actionDelete && slices.Contains(a.Actions, actionPush)) {
			return true
		}
	}
	return false
}

// scope is one requested scope: repository:<name>:<actions>.
type scope struct {
	repo    string
	actions []string
}

// parseScopes reads scope strings; each may hold several space-separated
// scopes (OAuth2 form) and unknown resource types are ignored.
func parseScopes(values []string) []scope {
	var out []scope
	for _, v := range values {
		for _, s := range strings.Fields(v) {
			typ, rest, ok := strings.Cut(s, ":")
			if !ok {
				continue
			}
			i := strings.LastIndex(rest, ":")
			if typ != "repository" || i < 0 {
				continue
			}
			name, actions := rest[:i], strings.Split(rest[i+1:], ",")
			if !registry.ValidRepository(name) {
				continue
			}
			out = append(out, scope{repo: name, actions: actions})
		}
	}
	return out
}

// tokenResponse is what engines expect from a token endpoint (both the
// distribution token and the OAuth2 spellings).
type tokenResponse struct {
	Token       string `json:"token,omitempty"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
	IssuedAt    string `json:"issued_at"`
	Scope       string `json:"scope,omitempty"`
}

// serveToken is GET /registry/token (distribution token auth, HTTP basic
// credentials) and POST /registry/token (OAuth2 password grant, as
// containerd sends when it has credentials).
func (p *Proxy) serveToken(w http.ResponseWriter, r *http.Request) {
	rec := p.record(w, "token_"+strings.ToLower(r.Method))
	defer rec.done()
	var (
		user, pass string
		ok         bool
		scopes     []string
		oauth      = r.Method == http.MethodPost
	)
	if oauth {
		if err := r.ParseForm(); err != nil {
			oauthError(rec, http.StatusBadRequest, "invalid_request", "unreadable form")
			return
		}
		switch r.PostForm.Get("grant_type") {
		case "password":
			user, pass, ok = r.PostForm.Get("username"), r.PostForm.Get("password"), true
		default:
			oauthError(rec, http.StatusBadRequest, "unsupported_grant_type", "only the password grant is supported")
			return
		}
		scopes = r.PostForm["scope"]
	} else {
		user, pass, ok = r.BasicAuth()
		scopes = r.URL.Query()["scope"]
	}
	if !ok || pass == "" {
		rec.Header().Set("WWW-Authenticate", `Basic realm="flock registry"`)
		distError(rec, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required: log in with a device's uuid and token, or any user name and an API key or access token", nil)
		return
	}
	sub, ok := p.login(rec, r, user, pass)
	if !ok {
		return
	}
	claims := tokenClaims{Access: []accessEntry{}}
	var granted []string
	for _, sc := range parseScopes(scopes) {
		rt, err := p.rights(r.Context(), sub, sc.repo)
		if errors.Is(err, errGone) {
			distError(rec, http.StatusUnauthorized, "UNAUTHORIZED", "the credentials were revoked", nil)
			return
		}
		if err != nil {
			p.log.ErrorContext(r.Context(), "registry token: rights", "subject", sub.String(), "repo", sc.repo, "error", err.Error())
			distError(rec, http.StatusServiceUnavailable, "UNAVAILABLE", "cannot check access now; retry shortly", nil)
			return
		}
		var actions []string
		for _, a := range sc.actions {
			if a == "*" {
				for _, x := range []string{actionPull, actionPush, actionDelete} {
					if rt.allows(x) && !slices.Contains(actions, x) {
						actions = append(actions, x)
					}
				}
				continue
			}
			if rt.allows(a) && !slices.Contains(actions, a) {
				actions = append(actions, a)
			}
		}
		if len(actions) == 0 {
			continue
		}
		claims.Access = mergeAccess(claims.Access, sc.repo, actions)
		granted = append(granted, "repository:"+sc.repo+":"+strings.Join(actions, ","))
	}
	now := time.Now()
	claims.Claims = jwt.Claims{
		Issuer:    p.cfg.Realm,
		Subject:   sub.String(),
		Audience:  jwt.Audience{p.cfg.Service},
		IssuedAt:  jwt.NewNumericDate(now),
		NotBefore: jwt.NewNumericDate(now),
		Expiry:    jwt.NewNumericDate(now.Add(TokenTTL)),
		ID:        rand.Text(),
	}
	tok, err := p.cfg.Tokens.Sign(TokenType, claims)
	if err != nil {
		p.log.ErrorContext(r.Context(), "registry token: sign", "error", err.Error())
		distError(rec, http.StatusInternalServerError, "UNKNOWN", "signing the token failed", nil)
		return
	}
	resp := tokenResponse{AccessToken: tok, ExpiresIn: int(TokenTTL / time.Second), IssuedAt: now.UTC().Format(time.RFC3339)}
	if oauth {
		resp.Scope = strings.Join(granted, " ")
	} else {
		resp.Token = tok
	}
	rec.Header().Set("Content-Type", "application/json")
	rec.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(rec).Encode(resp)
}

// login authenticates the token endpoint's basic credentials: a build
// credential under BuildUser, else a device token, API key or access token.
// On failure it has answered.
func (p *Proxy) login(w http.ResponseWriter, r *http.Request, user, pass string) (subject, bool) {
	if user == BuildUser {
		sub, err := p.verifyBuildCredential(r.Context(), pass)
		if err == nil {
			return sub, true
		}
		if errors.Is(err, devicetoken.ErrInvalidToken) {
			w.Header().Set("WWW-Authenticate", `Basic realm="flock registry"`)
			distError(w, http.StatusUnauthorized, "UNAUTHORIZED", "invalid build credential", nil)
			return subject{}, false
		}
		if errors.Is(err, errGone) {
			w.Header().Set("WWW-Authenticate", `Basic realm="flock registry"`)
			distError(w, http.StatusUnauthorized, "UNAUTHORIZED", "the build ended: its credentials were revoked", nil)
			return subject{}, false
		}
		p.log.ErrorContext(r.Context(), "registry token: verify build credential", "error", err.Error())
		distError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "cannot check the credentials now; retry shortly", nil)
		return subject{}, false
	}
	pr, err := p.cfg.Authn.Authenticate(r.Context(), "Bearer "+pass)
	if err != nil {
		var pe *problem.Error
		if errors.As(err, &pe) && pe.Status < 500 {
			w.Header().Set("WWW-Authenticate", `Basic realm="flock registry"`)
			distError(w, http.StatusUnauthorized, "UNAUTHORIZED", "invalid credentials: "+pe.Detail, nil)
			return subject{}, false
		}
		p.log.ErrorContext(r.Context(), "registry token: authenticate", "error", err.Error())
		distError(w, http.StatusServiceUnavailable, "UNAVAILABLE", "cannot check the credentials now; retry shortly", nil)
		return subject{}, false
	}
	if pr.Kind == auth.KindDevice && !strings.EqualFold(user, pr.DeviceID.String()) {
		w.Header().Set("WWW-Authenticate", `Basic realm="flock registry"`)
		distError(w, http.StatusUnauthorized, "UNAUTHORIZED", "a device logs in with its own uuid as the user name", nil)
		return subject{}, false
	}
	return subjectOf(pr), true
}

func mergeAccess(list []accessEntry, repo string, actions []string) []accessEntry {
	for i := range list {
		if list[i].Name == repo {
			for _, a := range actions {
				if !slices.Contains(list[i].Actions, a) {
					list[i].Actions = append(list[i].Actions, a)
				}
			}
			return list
		}
	}
	return append(list, accessEntry{Type: "repository", Name: repo, Actions: actions})
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

// bearer verifies the request's registry token; nil when it has none or a
// bad one (the caller then challenges).
func (p *Proxy) bearer(ctx context.Context, r *http.Request) *tokenClaims {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return nil
	}
	var c tokenClaims
	err := p.cfg.Tokens.VerifySigned(ctx, strings.TrimSpace(tok), TokenType,
		jwt.Expected{Issuer: p.cfg.Realm, AnyAudience: jwt.Audience{p.cfg.Service}}, &c)
	if err != nil {
		if !errors.Is(err, devicetoken.ErrInvalidToken) {
			p.log.WarnContext(ctx, "registry token: verify", "error", err.Error())
		}
		return nil
	}
	return &c
}

// subject is who a token was issued to.
type subject struct {
	kind auth.Kind
	id   uuid.UUID
}

func subjectOf(p *auth.Principal) subject { return subject{kind: p.Kind, id: p.ActorID()} }

func (s subject) String() string {
	if s.kind == kindBuild {
		return "build:" + s.id.String()
	}
	return (&auth.Principal{Kind: s.kind, UserID: s.id, KeyID: s.id, DeviceID: s.id}).Name()
}

func parseSubject(s string) (subject, error) {
	kind, id, ok := strings.Cut(s, ":")
	if !ok {
		return subject{}, fmt.Errorf("subject %q", s)
	}
	u, err := uuid.Parse(id)
	if err != nil {
		return subject{}, fmt.Errorf("subject %q: %w", s, err)
	}
	switch kind {
	case "user":
		return subject{auth.KindUser, u}, nil
	case "api_key":
		return subject{auth.KindAPIKey, u}, nil
	case "device":
		return subject{auth.KindDevice, u}, nil
	case "build":
		return subject{kindBuild, u}, nil
	}
	return subject{}, fmt.Errorf("subject %q: unknown kind", s)
}
