// Package builds holds what the builds API and the builder target share:
// how a build's services are stored, its log (lines numbered in PostgreSQL
// while it runs, one compressed text object in the blob store after), and
// ending a build: pushing each service's image index and turning the draft
// release final or failed, once, in one transaction.
package builds

import (
	"fmt"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// Build and image statuses (builds.status, build_images.status).
const (
	StatusQueued    = "queued"
	StatusRunning   = "running"
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
	StatusCancelled = "cancelled"
)

// Error codes of a BuildError.
const (
	CodeBuildFailed   = "build_failed"
	CodePushFailed    = "push_failed"
	CodeNoBuilder     = "no_builder"
	CodeTimeout       = "timeout"
	CodeSourceInvalid = "source_invalid"
	CodeCancelled     = "cancelled"
	CodeInternal      = "internal"
)

// Service is one service of a build, as builds.services stores it.
type Service struct {
	// Release is the service as its release names it: the compose
	// settings, and for a service that names an existing image, that
	// image for every architecture of the build.
	Release api.ReleaseService `json:"release"`
	// Build is what to build; nil for a service that names an image.
	Build *Build `json:"build,omitempty"`
}

// Build says how to build a service's image.
type Build struct {
	Context    string            `json:"context"`
	Dockerfile string            `json:"dockerfile"`
	Args       map[string]string `json:"args,omitempty"`
	Target     string            `json:"target,omitempty"`
	NeedsRun   bool              `json:"needs_run"`
}

// Ended reports whether status is final.
func Ended(status string) bool {
	return status == StatusSucceeded || status == StatusFailed || status == StatusCancelled
}

// CanBuild reports whether a builder that runs on or emulates archs may
// take img: its architecture is one of them, or building it runs nothing
// of that architecture.
func CanBuild(archs []string, img db.BuildImage) bool {
	if !img.NeedsRun {
		return true
	}
	for _, a := range archs {
		if a == img.Architecture {
			return true
		}
	}
	return false
}

// CanAnyBuild reports whether one of the builders may take img.
func CanAnyBuild(builders []db.Builder, img db.BuildImage) bool {
	for _, b := range builders {
		if CanBuild(b.Architectures, img) {
			return true
		}
	}
	return false
}

// NoBuilder says why img waits when no running builder can take it.
func NoBuilder(img db.BuildImage) string {
	if img.NeedsRun {
		return fmt.Sprintf("no running builder can build for %s (its Dockerfile runs commands, so it needs a builder on %s or emulating it)", img.Architecture, img.Architecture)
	}
	return "no builder is running"
}

// SourceKey is where a build's uploaded tar is kept while it runs.
func SourceKey(id string) string { return "builds/" + id + "/source.tar" }

// LogKey is where a build's log is kept once it ended.
func LogKey(id string) string { return "builds/" + id + "/log.txt.gz" }
