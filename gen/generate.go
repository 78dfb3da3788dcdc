// Package gen holds only generated code; this file says how it is made and
// embeds the bundled OpenAPI document that the server serves at /openapi.yaml.
// Run `make generate` (it bundles the spec with redocly first); never edit
// anything under gen/ by hand.
package gen

import "embed"

//go:generate go tool -modfile=../tools/go.mod oapi-codegen -config api/cfg.yaml api/openapi.yaml
//go:generate go tool -modfile=../tools/go.mod oapi-codegen -config client/cfg.yaml api/openapi.yaml
//go:generate go tool -modfile=../tools/go.mod sqlc generate -f ../sqlc.yaml

// OpenAPIYAML is the bundled OpenAPI document, byte for byte as generated.
//
//go:embed api/openapi.yaml
var OpenAPIYAML []byte

// AsyncAPIUI holds the AsyncAPI React component's standalone bundle and
// styles, copied from the pinned @asyncapi/react-component npm package.
//
//go:embed asyncapiui
var AsyncAPIUI embed.FS

// SwaggerUI holds the Swagger UI assets copied from the pinned
// swagger-ui-dist npm package.
//
//go:embed swaggerui
var SwaggerUI embed.FS
