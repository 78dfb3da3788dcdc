// Package asyncapi embeds the AsyncAPI document, the source of truth of
// every MQTT and Kafka payload, so the ingester validates against exactly the
// document the Go types were generated from.
package asyncapi

import _ "embed"

// YAML is asyncapi/flock.yaml.
//
//go:embed flock.yaml
var YAML []byte
