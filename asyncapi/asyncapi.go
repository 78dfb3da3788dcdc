// Package asyncapi holds the AsyncAPI document, the source of truth of every
// MQTT and Kafka payload, embedded, and the validator of payloads against
// it, so the broker and the ingester check exactly the document the Go
// types in gen/events were generated from (as gen/api embeds the OpenAPI
// document its server validates against).
package asyncapi

import _ "embed"

// YAML is asyncapi/flock.yaml.
//
//go:embed flock.yaml
var YAML []byte
