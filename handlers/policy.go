package handlers

import (
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/auth"
)

// Policy is the access rule of every operation, in one table: who may call
// it (the least role, viewer < developer < admin < owner), whether it is
// a write that runs in a transaction and is audited, and whether its
// response carries a secret no cache may keep (NoStore). The server refuses
// to start when an operation of the spec is missing here.
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
	"api-key:create": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true, NoAPIKeys: true, NoStore: true},
	// Developers revoke the keys they created; admins any (checked in the handler).
	"api-key:delete": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},

	"audit-event:list": {Level: auth.OrgRole, MinRole: db.OrgRoleAdmin},

	"fleet:list":   {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"fleet:create": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"fleet:get":    {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"fleet:update": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"fleet:delete": {Level: auth.OrgRole, MinRole: db.OrgRoleAdmin, Write: true},

	"provisioning-key:list":   {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper},
	"provisioning-key:create": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true, NoStore: true},
	"provisioning-key:delete": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},

	"release:list":   {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"release:create": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"release:get":    {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"release:update": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},

	"build:list":   {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"build:get":    {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"build:create": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"build:cancel": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	// The log holds no secrets: they are masked before it is stored.
	"build-log:get":    {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"build-log:stream": {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},

	"rollout:list":        {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"rollout:get":         {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"rollout-device:list": {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"rollout:create":      {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"rollout:start":       {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"rollout:pause":       {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"rollout:resume":      {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"rollout:next-group":  {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"rollout:approve":     {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"rollout:abort":       {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"rollout:cancel":      {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},

	"device-group:list":   {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device-group:get":    {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device-group:create": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"device-group:update": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"device-group:delete": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},

	"device:list":   {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device:get":    {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device:update": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"device:delete": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},

	"device-connectivity:list": {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},

	"device-telemetry:get":     {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device-metric:list":       {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device-log:list":          {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device-update-event:list": {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"fleet-summary:get":        {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"org-summary:get":          {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},

	// Streams are reads: checked once, when they open.
	"org-events:stream":             {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"org-events:websocket":          {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"fleet-events:stream":           {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"fleet-events:websocket":        {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device-group-events:stream":    {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device-group-events:websocket": {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device-events:stream":          {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device-events:websocket":       {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"rollout-events:stream":         {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"rollout-events:websocket":      {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device-log:stream":             {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device-log:websocket":          {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},

	// The organisation's tunnel_min_role (developer unless an admin
	// changed it) is checked in the handler; the session is audited there.
	"device-tunnel:open":         {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device-tunnel-session:list": {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},

	// Event subscriptions: admins manage endpoints (their secrets, where
	// the organisation's events go), developers read them and the log.
	"event-type:list":              {Level: auth.Authenticated},
	"event-endpoint:list":          {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper},
	"event-endpoint:get":           {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper},
	"event-delivery-attempt:list":  {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper},
	"event-endpoint:create":        {Level: auth.OrgRole, MinRole: db.OrgRoleAdmin, Write: true, NoStore: true},
	"event-endpoint:update":        {Level: auth.OrgRole, MinRole: db.OrgRoleAdmin, Write: true},
	"event-endpoint:delete":        {Level: auth.OrgRole, MinRole: db.OrgRoleAdmin, Write: true},
	"event-endpoint:rotate-secret": {Level: auth.OrgRole, MinRole: db.OrgRoleAdmin, Write: true, NoStore: true},
	"event-endpoint:replay":        {Level: auth.OrgRole, MinRole: db.OrgRoleAdmin, Write: true},
	"event-endpoint:test":          {Level: auth.OrgRole, MinRole: db.OrgRoleAdmin},
	"org-cloudevents:websocket":    {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},

	"device-command:create": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"device-command:list":   {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"command:get":           {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},

	"fleet-variable:list":    {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"fleet-variable:create":  {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"fleet-variable:update":  {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"fleet-variable:delete":  {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"device-variable:list":   {Level: auth.OrgRole, MinRole: db.OrgRoleViewer},
	"device-variable:create": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"device-variable:update": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},
	"device-variable:delete": {Level: auth.OrgRole, MinRole: db.OrgRoleDeveloper, Write: true},

	// The device API: registration proves itself with a provisioning key in
	// the body, the token endpoint with a signed assertion.
	"device:register":        {Level: auth.Public},
	"device:token":           {Level: auth.Public, NoStore: true},
	"jwks:get":               {Level: auth.Public},
	"device-state:get":       {Level: auth.Device},
	"device-state:update":    {Level: auth.Device},
	"device-delta:get":       {Level: auth.Device},
	"device-tunnel:register": {Level: auth.Device},

	// An external MQTT broker's hooks: the broker is no user or device. The
	// request body carries the client's credentials; a deployment locks the
	// hooks themselves with a hook token (handlers/mqtthooks Gate).
	"mqtt-hook:authenticate": {Level: auth.Public},
	"mqtt-hook:authorize":    {Level: auth.Public},
}
