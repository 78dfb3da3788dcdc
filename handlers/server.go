// Package handlers assembles the resource handlers into the one value that
// implements the generated strict server interface.
package handlers

import (
	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/handlers/system"
)

// Server implements every operation of the OpenAPI document; each embedded
// handler brings the operations of one resource.
type Server struct {
	*system.Handler
}

var _ api.StrictServerInterface = (*Server)(nil)
