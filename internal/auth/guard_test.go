package auth

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/audit"
)

const keyedSpec = `
openapi: 3.0.3
info: {title: guard test, version: "1"}
paths:
  /v1/orgs/{orgId}/secrets:
    post:
      operationId: secret:create
      parameters:
        - {name: orgId, in: path, required: true, schema: {type: string}}
        - {name: Idempotency-Key, in: header, schema: {type: string}}
      responses:
        "201": {description: created}
`

// A response that must not be kept cannot take an Idempotency-Key: the key
// would keep it, secret and all, for a day. The guard refuses the policy at
// start rather than store it.
func TestNoStoreOperationsTakeNoKeys(t *testing.T) {
	spec, err := openapi3.NewLoader().LoadFromData([]byte(keyedSpec))
	if err != nil {
		t.Fatal(err)
	}
	rule := Rule{Level: OrgRole, MinRole: db.OrgRoleDeveloper, Write: true}
	if _, err := NewGuard(spec, Policy{"secret:create": rule}, nil, audit.NewRecorder(nil), slog.New(slog.DiscardHandler)); err != nil {
		t.Fatalf("a keyed write without NoStore: %v", err)
	}
	rule.NoStore = true
	_, err = NewGuard(spec, Policy{"secret:create": rule}, nil, audit.NewRecorder(nil), slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "secret:create") {
		t.Fatalf("NewGuard = %v, want the keyed NoStore operation refused by name", err)
	}
}
