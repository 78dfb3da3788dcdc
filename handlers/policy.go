package handlers

import (
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
)

// Policy is the access rule of every operation, in one table: who may call
// it (the least role, viewer < developer < admin < owner) and whether it is
// a write that runs in a transaction and is audited. The server refuses to
// start when an operation of the spec is missing here.
var Policy = auth.Policy{
	"version:get": {Level: auth.Public},

	"me:get":     {Level: auth.UserOnly},
	"org:list":   {Level: auth.Authenticated},
	"org:create": {Level: auth.UserOnly, Write: true},
	"org:get":    {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"org:update": {Level: auth.OrgRole, MinRole: db.OrgRoleAdmin, Write: true},
	"org:delete": {Level: auth.OrgRole, MinRole: db.OrgRoleOwner, Write: true},

	"member:list":   {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"member:create": {Level: auth.OrgRole, MinRole: db.OrgRoleAdmin, Write: true},
	"member:update": {Level: auth.OrgRole, MinRole: db.OrgRoleAdmin, Write: true},
	// Anyone may leave; removing someone else needs admin (checked in the handler).
	"member:delete": {Level: auth.OrgRole, MinRole: db.OrgRoleViewer, Write: true},

	"api-key:list":   {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper},
	"api-key:create": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true, NoAPIKeys: true},
	// Developers revoke the keys they created; admins any (checked in the handler).
	"api-key:delete": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},

	"audit-event:list": {Level: auth.OrgRole, MinRole: db.OrgRoleAdmin},
}
