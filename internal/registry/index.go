package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// IndexEntry is one architecture's manifest, already in the repository, for
// PushIndex.
type IndexEntry struct {
	Architecture string // a Flock architecture
	Digest       v1.Hash
	MediaType    types.MediaType
	Size         int64
}

// PushIndex writes an OCI image index of entries to repo under tag and
// returns its digest. The manifests must be in repo already (the registry
// refuses an index naming unknown manifests).
func (r *Registry) PushIndex(ctx context.Context, repo, tag string, entries []IndexEntry) (v1.Hash, error) {
	n, err := r.repository(repo)
	if err != nil {
		return v1.Hash{}, err
	}
	m := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}
	for _, e := range entries {
		p, ok := Platform(e.Architecture)
		if !ok {
			return v1.Hash{}, fmt.Errorf("registry: index of %s: unknown architecture %q", repo, e.Architecture)
		}
		m.Manifests = append(m.Manifests, v1.Descriptor{MediaType: e.MediaType, Digest: e.Digest, Size: e.Size, Platform: &p})
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("registry: encode index: %w", err)
	}
	// The children are in the registry already: the index is PUT alone
	// (remote.WriteIndex would want to read them to write them).
	if err := remote.Put(n.Tag(tag), rawIndex(raw), r.remoteOptions(ctx)...); err != nil {
		return v1.Hash{}, r.wrap("push index "+repo+":"+tag, err)
	}
	h, _, err := v1.SHA256(bytes.NewReader(raw))
	return h, err
}

// rawIndex is an encoded OCI image index, for remote.Put.
type rawIndex []byte

func (r rawIndex) RawManifest() ([]byte, error)        { return r, nil }
func (r rawIndex) MediaType() (types.MediaType, error) { return types.OCIImageIndex, nil }
