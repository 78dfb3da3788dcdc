package registryproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
	"github.com/flock-io/flock-api/internal/deviceimages"
	"github.com/flock-io/flock-api/internal/registry"
)

// errGone means the token's subject no longer exists (a deleted device or
// API key, an expired key): every request is refused with 401.
var errGone = errors.New("registry: credentials revoked")

// rights is what a subject may do in one repository now.
type rights struct {
	pull, push bool
	// visible is false for repositories the subject must not learn
	// anything about (another organisation's, or no fleet's): they get the
	// answer of a missing repository.
	visible bool
	// device is set for devices: pulls are limited to these manifests and
	// blobs.
	device *repoAllow
}

func (r rights) allows(action string) bool {
	switch action {
	case actionPull:
		return r.pull
	case actionPush, actionDelete:
		return r.push
	}
	return false
}

// repoAllow is what a device may read in one repository: the manifests its
// releases name, their index children, and the blobs of all of them.
type repoAllow struct {
	manifests map[string]bool
	blobs     map[string]bool
}

// deviceAccess is a device's allowance, per repository.
type deviceAccess struct {
	repos map[string]*repoAllow
}

// rights decides what sub may do in repo, from the database as of at most
// accessTTL ago.
func (p *Proxy) rights(ctx context.Context, sub subject, repo string) (rights, error) {
	key := sub.String() + " " + repo
	if rt, ok := p.rightsCache.Get(key); ok {
		return rt, nil
	}
	rt, err := p.loadRights(ctx, sub, repo)
	if err != nil {
		return rights{}, err
	}
	p.rightsCache.Add(key, rt)
	return rt, nil
}

// freshRights is rights read from the database now, replacing what the
// cache held.
func (p *Proxy) freshRights(ctx context.Context, sub subject, repo string) (rights, error) {
	p.rightsCache.Remove(sub.String() + " " + repo)
	if sub.kind == auth.KindDevice {
		p.deviceCache.Remove(sub.id)
	}
	return p.rights(ctx, sub, repo)
}

func (p *Proxy) loadRights(ctx context.Context, sub subject, repo string) (rights, error) {
	q := db.New(p.cfg.Pool)
	if sub.kind == auth.KindDevice {
		da, err := p.device(ctx, sub.id)
		if err != nil {
			return rights{}, err
		}
		// A device learns nothing from a refusal, so every repository is
		// "visible": outside its releases it is denied, not missing.
		rt := rights{visible: true}
		if a := da.repos[repo]; a != nil {
			rt.pull, rt.device = true, a
		} else {
			rt.device = &repoAllow{}
		}
		return rt, nil
	}
	var keyOrg uuid.UUID
	var keyRole db.OrgRole
	userID := uuid.Nil
	switch sub.kind {
	case auth.KindAPIKey:
		k, err := q.ApiKeyByID(ctx, sub.id)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && k.ExpiresAt != nil && !k.ExpiresAt.After(time.Now())) {
			return rights{}, errGone
		}
		if err != nil {
			return rights{}, fmt.Errorf("load API key %s: %w", sub.id, err)
		}
		keyOrg, keyRole = k.OrgID, k.Role
	case auth.KindUser:
		userID = sub.id
	case kindBuild:
		return p.buildRights(ctx, q, sub.id, repo)
	default:
		return rights{}, errGone
	}
	org, fleet, ok := splitRepo(repo)
	if !ok {
		return rights{}, nil
	}
	row, err := q.RegistryRepoAccess(ctx, db.RegistryRepoAccessParams{OrgSlug: org, FleetSlug: fleet, UserID: userID})
	if errors.Is(err, pgx.ErrNoRows) {
		return rights{}, nil
	}
	if err != nil {
		return rights{}, fmt.Errorf("repository %s: %w", repo, err)
	}
	var role db.OrgRole
	switch {
	case sub.kind == auth.KindAPIKey && row.OrgID == keyOrg:
		role = keyRole
	case sub.kind == auth.KindUser && row.MemberRole != nil:
		role = *row.MemberRole
	default:
		return rights{}, nil
	}
	return rights{
		visible: auth.AtLeast(role, db.OrgRoleViewer),
		pull:    auth.AtLeast(role, db.OrgRoleViewer),
		push:    auth.AtLeast(role, db.OrgRoleDeveloper),
	}, nil
}

// splitRepo reads <org slug>/<fleet slug>/<service>[/...].
func splitRepo(repo string) (org, fleet string, ok bool) {
	parts := strings.SplitN(repo, "/", 3)
	if len(parts) < 3 {
		return "", "", false
	}
	return parts[0], parts[1], true
}

// device loads what a device may pull: the images its running, previous
// and target releases name for its architecture, in its organisation's
// repositories, with index children and blobs. Cached for accessTTL; a
// deleted device is errGone.
func (p *Proxy) device(ctx context.Context, id uuid.UUID) (*deviceAccess, error) {
	if da, ok := p.deviceCache.Get(id); ok {
		return da, nil
	}
	v, err, _ := p.flight.Do("device "+id.String(), func() (any, error) {
		return p.loadDevice(ctx, id)
	})
	if err != nil {
		return nil, err
	}
	da := v.(*deviceAccess)
	p.deviceCache.Add(id, da)
	return da, nil
}

func (p *Proxy) loadDevice(ctx context.Context, id uuid.UUID) (*deviceAccess, error) {
	imgs, err := deviceimages.Load(ctx, p.cfg.Pool, id)
	if errors.Is(err, deviceimages.ErrNoDevice) {
		return nil, errGone
	}
	if err != nil {
		return nil, err
	}
	da := &deviceAccess{repos: map[string]*repoAllow{}}
	for _, set := range []map[string]string{imgs.Own, imgs.Target} {
		for digest, repo := range set {
			if err := p.allow(ctx, da, repo, digest, 0); err != nil {
				return nil, err
			}
		}
	}
	return da, nil
}

// allow adds a manifest and what it references to a device's allowance.
func (p *Proxy) allow(ctx context.Context, da *deviceAccess, repo, digest string, depth int) error {
	a := da.repos[repo]
	if a == nil {
		a = &repoAllow{manifests: map[string]bool{}, blobs: map[string]bool{}}
		da.repos[repo] = a
	}
	if a.manifests[digest] {
		return nil
	}
	a.manifests[digest] = true
	refs, err := p.refs(ctx, repo, digest)
	if errors.Is(err, registry.ErrNotFound) {
		return nil // not pushed (yet): the device is told it is unknown
	}
	if err != nil {
		return err
	}
	for _, b := range refs.blobs {
		a.blobs[b] = true
	}
	if depth < 2 {
		for _, c := range refs.children {
			if err := p.allow(ctx, da, repo, c, depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// manifestRefs is what one manifest references: an index's manifests or an
// image's config and layers. Manifests are immutable by digest, so these
// are cached for good.
type manifestRefs struct {
	children []string
	blobs    []string
}

func (p *Proxy) refs(ctx context.Context, repo, digest string) (*manifestRefs, error) {
	key := repo + "@" + digest
	if r, ok := p.refsCache.Get(key); ok {
		return r, nil
	}
	body, mt, _, err := p.cfg.Registry.Manifest(ctx, repo, digest)
	if err != nil {
		return nil, err
	}
	r := &manifestRefs{}
	if mt.IsIndex() {
		im, err := v1.ParseIndexManifest(bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("parse index %s: %w", key, err)
		}
		for _, m := range im.Manifests {
			r.children = append(r.children, m.Digest.String())
		}
	} else {
		m, err := v1.ParseManifest(bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("parse manifest %s: %w", key, err)
		}
		r.blobs = append(r.blobs, m.Config.Digest.String())
		for _, l := range m.Layers {
			r.blobs = append(r.blobs, l.Digest.String())
		}
	}
	p.refsCache.Add(key, r)
	return r, nil
}
