package releases

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/internal/deviceimages"
	"github.com/flock-io/flock-api/internal/http/problem"
	"github.com/flock-io/flock-api/internal/registry"
)

// architectures in the order the API lists them, with their images.
func images(s api.ReleaseService) []struct {
	arch string
	img  *api.ServiceImage
} {
	return []struct {
		arch string
		img  *api.ServiceImage
	}{
		{"amd64", s.Images.Amd64}, {"arm64", s.Images.Arm64}, {"armv7", s.Images.Armv7},
		{"armv6", s.Images.Armv6}, {"i386", s.Images.I386}, {"riscv64", s.Images.Riscv64},
	}
}

// splitImage splits a reference into its registry host ("" when it names
// none: the first part of a reference is a host when it has a dot or a
// port, or is localhost, as container engines read it) and its repository
// without a tag.
func splitImage(ref string) (host, repo string) {
	if first, _, ok := strings.Cut(ref, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		host = first
	}
	return host, deviceimages.Repository(ref)
}

// checkImages asks the platform registry for every image of the release:
// each must be in the organisation's namespace, exist there, and hold its
// architecture (an index a manifest for it, a manifest a config naming
// it). It rewrites each image to the registry's public host and the
// repository, the name target states give devices. An image of another
// organisation gets the answer of a missing one.
func (h *Releases) checkImages(ctx context.Context, orgSlug string, services []api.ReleaseService) error {
	var fields []problem.FieldError
	code := ""
	fail := func(c string, field, format string, args ...any) {
		if code == "" {
			code = c
		}
		fields = append(fields, problem.FieldError{In: "body", Field: field, Detail: fmt.Sprintf(format, args...)})
	}
	for i, s := range services {
		for _, a := range images(s) {
			if a.img == nil {
				continue
			}
			field := fmt.Sprintf("/services/%d/images/%s", i, a.arch)
			host, repo := splitImage(a.img.Image)
			if host != "" && host != h.RegistryHost {
				fail("image_external", field+"/image",
					"%s is in another registry: copy it into the platform registry first (skopeo copy docker://%s@%s docker://%s/%s/<fleet>/%s) and name that",
					a.img.Image, repo, a.img.Digest, h.RegistryHost, orgSlug, s.Name)
				continue
			}
			if org, _, _ := strings.Cut(repo, "/"); org != orgSlug || !strings.Contains(repo, "/") {
				fail("image_not_found", field, "no image %s in repository %s of the platform registry", a.img.Digest, repo)
				continue
			}
			_, err := h.Registry.Resolve(ctx, repo, a.img.Digest, a.arch)
			switch {
			case errors.Is(err, registry.ErrNotFound):
				fail("image_not_found", field, "no image %s in repository %s of the platform registry", a.img.Digest, repo)
				continue
			case errors.Is(err, registry.ErrNoPlatform):
				fail("architecture_missing", field, "image %s in %s has no manifest for %s", a.img.Digest, repo, a.arch)
				continue
			case err != nil:
				return fmt.Errorf("check image %s@%s: %w", repo, a.img.Digest, err)
			}
			a.img.Image = h.RegistryHost + "/" + repo
		}
	}
	if len(fields) > 0 {
		return &problem.Error{Status: http.StatusUnprocessableEntity, Code: code, Detail: fields[0].Detail, Errors: fields}
	}
	return nil
}
