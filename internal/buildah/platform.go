package buildah

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
)

// Platform is an OCI platform as buildah's --platform takes it.
type Platform struct {
	OS, Architecture, Variant string
}

// String is the os/arch[/variant] form of --platform.
func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// Architectures are the Flock architecture names a build can target.
var Architectures = []string{"amd64", "arm64", "armv7", "armv6", "i386", "riscv64"}

var platforms = map[string]Platform{
	"amd64":   {"linux", "amd64", ""},
	"arm64":   {"linux", "arm64", ""},
	"armv7":   {"linux", "arm", "v7"},
	"armv6":   {"linux", "arm", "v6"},
	"i386":    {"linux", "386", ""},
	"riscv64": {"linux", "riscv64", ""},
}

// PlatformOf maps a Flock architecture name (a device type's arch) to the
// OCI platform images for it carry.
func PlatformOf(arch string) (Platform, error) {
	p, ok := platforms[arch]
	if !ok {
		return Platform{}, fmt.Errorf("unknown architecture %q (known: %s)", arch, strings.Join(Architectures, ", "))
	}
	return p, nil
}

// qemuHandlers are the binfmt_misc entry names qemu-user-static (and
// tonistiigi/binfmt) register, and the Flock architectures each one runs.
var qemuHandlers = map[string][]string{
	"qemu-x86_64":  {"amd64"},
	"qemu-aarch64": {"arm64"},
	"qemu-arm":     {"armv7", "armv6"},
	"qemu-i386":    {"i386"},
	"qemu-riscv64": {"riscv64"},
}

const binfmtDir = "/proc/sys/fs/binfmt_misc"

// NativeArchitectures are the Flock architectures this host can run RUN
// steps for: its own, and those a registered and enabled qemu binfmt_misc
// handler emulates. Builds for the others can only COPY.
func NativeArchitectures() []string {
	return nativeArchitectures(runtime.GOARCH, binfmtDir)
}

// HostArchitecture is the Flock name of the architecture this program runs
// on, "" for one Flock does not know.
func HostArchitecture() string {
	return hostArchitectures(runtime.GOARCH)[0]
}

func hostArchitectures(goarch string) []string {
	switch goarch {
	case "amd64", "arm64", "riscv64":
		return []string{goarch}
	case "386":
		return []string{"i386"}
	case "arm":
		// Which ARM revision the CPU is (armv6 or armv7) is not worth
		// probing here: Flock's builders are amd64 or arm64 hosts.
		return []string{"armv7", "armv6"}
	}
	return []string{""}
}

func nativeArchitectures(goarch, binfmt string) []string {
	var archs []string
	if a := hostArchitectures(goarch); a[0] != "" {
		archs = append(archs, a...)
	}
	// binfmt_misc's own switch turns every handler off at once.
	if enabled(filepath.Join(binfmt, "status")) {
		for handler, as := range qemuHandlers {
			if enabled(filepath.Join(binfmt, handler)) {
				archs = append(archs, as...)
			}
		}
	}
	slices.Sort(archs)
	return slices.Compact(archs)
}

// enabled reads a binfmt_misc file, whose first line is "enabled" or
// "disabled".
func enabled(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(first) == "enabled"
}
