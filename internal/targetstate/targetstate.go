// Package targetstate computes what a device should run: the services of its
// release with their images for its architecture, and its configuration
// variables merged in balena's order (fleet < fleet+service < device <
// device+service; the release's own service environment is the base).
package targetstate

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sort"

	"github.com/google/uuid"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
)

// Release is the chosen release with its decoded services, or nil.
type Release struct {
	ID       uuid.UUID
	Version  string
	Services []api.ReleaseService
}

// Image returns a service's image for an architecture, if the release has one.
func Image(s api.ReleaseService, arch string) *api.ServiceImage {
	switch arch {
	case "amd64":
		return s.Images.Amd64
	case "arm64":
		return s.Images.Arm64
	case "armv7":
		return s.Images.Armv7
	case "armv6":
		return s.Images.Armv6
	case "i386":
		return s.Images.I386
	case "riscv64":
		return s.Images.Riscv64
	}
	return nil
}

// Compute builds the target state and its version, a digest of everything in
// it, so any change to release, images or variables changes the version.
// Callers load its inputs with Load; use Load (or ForDevice) rather than
// calling Compute on inputs gathered otherwise, so the state endpoint and the
// nudges can never disagree on a version.
func Compute(deviceID uuid.UUID, arch string, rel *Release, vars []db.ConfigVariable) api.TargetState {
	// Layers from weakest to strongest.
	rank := func(v db.ConfigVariable) int {
		r := 0
		if v.DeviceID.Valid {
			r += 2
		}
		if v.Service != "" {
			r++
		}
		return r
	}
	sorted := append([]db.ConfigVariable(nil), vars...)
	sort.SliceStable(sorted, func(i, j int) bool { return rank(sorted[i]) < rank(sorted[j]) })

	global := map[string]string{}
	for _, v := range sorted {
		if v.Service == "" {
			global[v.Name] = v.Value
		}
	}
	ts := api.TargetState{DeviceId: deviceID, Variables: global, Services: []api.TargetService{}}
	if rel != nil {
		ts.Release = &api.TargetRelease{Id: rel.ID, Version: rel.Version}
		for _, s := range rel.Services {
			img := Image(s, arch)
			if img == nil {
				continue // validated at release creation; a moved device may lack one
			}
			env := map[string]string{}
			if s.Environment != nil {
				for k, v := range *s.Environment {
					env[k] = v
				}
			}
			for _, v := range sorted {
				if v.Service == "" || v.Service == s.Name {
					env[v.Name] = v.Value
				}
			}
			ts.Services = append(ts.Services, api.TargetService{
				Name: s.Name, Image: repository(img.Image) + "@" + img.Digest, Digest: img.Digest, Environment: env,
				Labels: orEmptyMap(s.Labels), Ports: orEmpty(s.Ports), Volumes: orEmpty(s.Volumes),
				Restart: restart(s.Restart), Privileged: s.Privileged != nil && *s.Privileged, CapAdd: orEmpty(s.CapAdd),
				UpdateStrategy: strategy(s.UpdateStrategy),
			})
		}
	}
	ts.Version = version(ts)
	return ts
}

// version digests the state (the version field itself still empty); Go's
// JSON encoder sorts map keys, so equal states give equal versions.
func version(ts api.TargetState) string {
	b, _ := json.Marshal(ts)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// repository strips a tag: the image is pinned by digest instead.
func repository(ref string) string {
	slash := -1
	for i := len(ref) - 1; i >= 0; i-- {
		switch ref[i] {
		case '/':
			slash = i
		case ':':
			if slash == -1 {
				return ref[:i]
			}
		}
		if slash != -1 {
			break
		}
	}
	return ref
}

func restart(r *api.ReleaseServiceRestart) string {
	if r == nil {
		return "unless-stopped"
	}
	return string(*r)
}

func orEmpty(s *[]string) []string {
	if s == nil {
		return []string{}
	}
	return *s
}

func orEmptyMap(m *map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return *m
}

// strategy is the service's update strategy, download-then-kill (balena's
// default) when the release names none.
func strategy(s *api.UpdateStrategy) api.UpdateStrategy {
	if s == nil {
		return api.DownloadThenKill
	}
	return *s
}
