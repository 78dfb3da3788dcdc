// Package buildinfo says which build is running.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Version and Commit are set at link time by the Makefile
// (-ldflags "-X .../buildinfo.Version=v1.2.3 -X .../buildinfo.Commit=abc123"):
// the go command's own VCS stamp is off wherever GOFLAGS holds
// -buildvcs=false, as on our CI machines.
var (
	Version = "dev"
	Commit  = ""
)

// Info describes the running binary.
type Info struct {
	Version   string
	Commit    string
	GoVersion string
}

// Get returns the commit set at link time, or else the VCS revision the go
// command stamped into the binary.
func Get() Info {
	info := Info{Version: Version, Commit: "unknown", GoVersion: runtime.Version()}
	if Commit != "" {
		info.Commit = Commit
		return info
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return info
	}
	var modified bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value
			if len(info.Commit) > 12 {
				info.Commit = info.Commit[:12]
			}
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if modified && info.Commit != "unknown" {
		info.Commit += "-dirty"
	}
	return info
}
