// Package migrations embeds the goose SQL migrations so the binary can apply
// them without the source tree (`flock-api migrate`, and dev mode at start).
package migrations

import "embed"

// FS holds every migration, named NNNNN_description.sql.
//
//go:embed *.sql
var FS embed.FS
