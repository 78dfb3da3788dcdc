// Package auth decides who is calling (a user with an OIDC token, or an
// organisation API key) and whether they may: the Authenticator middleware
// resolves the bearer credential to a Principal, and the Guard enforces the
// per-operation policy, opens the transaction of a write and records it in
// the audit log.
package auth

import (
	"context"
	"errors"
	"net/http"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/db"
)

// Kind tells users from API keys.
type Kind int

const (
	// KindUser is a person with an access token from the OIDC provider.
	KindUser Kind = iota + 1
	// KindAPIKey is an organisation API key.
	KindAPIKey
	// KindDevice is a device with a device token.
	KindDevice
)

// Principal is the authenticated caller.
type Principal struct {
	Kind Kind
	// UserID and Email are set for users.
	UserID uuid.UUID
	Email  string
	// Key fields are set for API keys: the key's id, name, organisation and role.
	KeyID   uuid.UUID
	KeyName string
	KeyOrg  uuid.UUID
	KeyRole db.OrgRole
	// Device fields are set for devices, from the database (not the token,
	// which may predate a move).
	DeviceID uuid.UUID
	OrgID    uuid.UUID
	FleetID  uuid.UUID
}

// ActorType is the audit log's name for the kind.
func (p *Principal) ActorType() string {
	switch p.Kind {
	case KindAPIKey:
		return "api_key"
	case KindDevice:
		return "device"
	}
	return "user"
}

// ActorID is the user's or the key's id.
func (p *Principal) ActorID() uuid.UUID {
	switch p.Kind {
	case KindAPIKey:
		return p.KeyID
	case KindDevice:
		return p.DeviceID
	}
	return p.UserID
}

// Label is the user's email or the key's name.
func (p *Principal) Label() string {
	switch p.Kind {
	case KindAPIKey:
		return p.KeyName
	case KindDevice:
		return p.DeviceID.String()
	}
	return p.Email
}

type principalKey struct{}

// WithPrincipal returns ctx carrying p.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the caller, or nil for an anonymous request.
func PrincipalFrom(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// Access is what the Guard established for an operation: who, in which
// organisation, with which role. Handlers read it and may name the
// organisation and the target they created, for the audit log.
type Access struct {
	Principal *Principal
	OrgID     uuid.UUID
	Role      db.OrgRole
	Operation string
	target    string
}

// SetOrg names the organisation an operation acted in when it was not in the
// path (org:create).
func (a *Access) SetOrg(id uuid.UUID) { a.OrgID = id }

// SetTarget names the resource an operation changed when it is not the last
// path parameter (creates).
func (a *Access) SetTarget(id string) { a.target = id }

type accessKey struct{}

func withAccess(ctx context.Context, a *Access) context.Context {
	return context.WithValue(ctx, accessKey{}, a)
}

// AccessFrom returns the request's Access. Handlers run only behind the
// Guard, so it is always present there.
func AccessFrom(ctx context.Context) *Access {
	a, _ := ctx.Value(accessKey{}).(*Access)
	return a
}

var rank = map[db.OrgRole]int{db.OrgRoleViewer: 1, db.OrgRoleDeveloper: 2, db.OrgRoleAdmin: 3, db.OrgRoleOwner: 4}

// AtLeast reports whether role r is min or higher.
func AtLeast(r, min db.OrgRole) bool { return rank[r] >= rank[min] && rank[r] > 0 }

// RequirePrincipal is the spec validator's check of the bearer security
// scheme: the Authenticator ran first, so the scheme is satisfied exactly
// when it found a caller. Checking here makes an anonymous request to a
// protected operation a 401 before its body is looked at.
func RequirePrincipal(ctx context.Context, in *openapi3filter.AuthenticationInput) error {
	p := PrincipalFrom(in.RequestValidationInput.Request.Context())
	switch {
	case p == nil:
		return errors.New("no credentials")
	case in.SecuritySchemeName == "device" && p.Kind != KindDevice:
		return errors.New("needs a device token")
	case in.SecuritySchemeName != "device" && p.Kind == KindDevice:
		return errors.New("device tokens are for the device API")
	}
	return nil
}

// Name is a stable name of the caller ("user:<id>", "api_key:<id>",
// "device:<id>") that scopes what the caller owns, such as idempotency keys.
func (p *Principal) Name() string { return p.ActorType() + ":" + p.ActorID().String() }

// NameOf is the Name of the request's caller, or "" when anonymous.
func NameOf(r *http.Request) string {
	if p := PrincipalFrom(r.Context()); p != nil {
		return p.Name()
	}
	return ""
}
