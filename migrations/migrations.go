// Package migrations embeds the goose SQL migrations so the binary can apply
// them without the source tree (`flock-api migrate`, and dev mode at start).
//
// From 00007 on, a migration belongs to one aggregate and its file is named
// after the table it creates or changes first (00007_devices_...,
// 00008_rollouts.sql), so a table's history is found by its name; the test
// holds new files to it. goose orders them by the number alone.
package migrations

import "embed"

// FS holds every migration, named NNNNN_description.sql.
//
//go:embed *.sql
var FS embed.FS
