// Package deviceimages reads which images of the platform registry a device
// may use: those of its running and previous releases (for a rollback and as
// delta bases) and of its target release, for its architecture and in its
// organisation's repositories. The registry-proxy lets a device pull exactly
// these, and the delta endpoint computes deltas only between them, so both
// read them here.
package deviceimages

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/flock-io/flock-api/gen/api"
	"github.com/flock-io/flock-api/gen/db"
	"github.com/flock-io/flock-api/internal/targetstate"
)

// ErrNoDevice is returned for a device that does not exist (any more).
var ErrNoDevice = errors.New("deviceimages: no such device")

// Images are a device's images, each a digest mapped to its repository.
type Images struct {
	OrgID   uuid.UUID
	OrgSlug string
	Arch    string
	// Own are the images of the releases the device runs and ran before,
	// when they are its fleet's (another fleet's release gives it nothing).
	Own map[string]string
	// Target are the images of its target release, chosen by the target
	// state's rules.
	Target map[string]string
}

// Load reads a device's images in one snapshot.
func Load(ctx context.Context, pool *pgxpool.Pool, device uuid.UUID) (Images, error) {
	out := Images{Own: map[string]string{}, Target: map[string]string{}}
	var (
		dev    db.RegistryDeviceRow
		own    [][]byte
		target [][]byte
	)
	err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		q := db.New(tx)
		var err error
		if dev, err = q.RegistryDevice(ctx, device); err != nil {
			return err
		}
		choices, err := q.TargetChoices(ctx, []uuid.UUID{device})
		if err != nil {
			return err
		}
		if len(choices) == 1 && choices[0].ReleaseID.Valid {
			rows, err := q.TargetReleases(ctx, []uuid.UUID{choices[0].ReleaseID.UUID})
			if err != nil {
				return err
			}
			for _, r := range rows {
				target = append(target, r.Services)
			}
		}
		var ids []uuid.UUID
		for _, r := range []uuid.NullUUID{dev.RunningReleaseID, dev.PreviousReleaseID} {
			if r.Valid {
				ids = append(ids, r.UUID)
			}
		}
		if len(ids) == 0 {
			return nil
		}
		rows, err := q.RegistryFleetReleases(ctx, db.RegistryFleetReleasesParams{FleetID: dev.FleetID, Ids: ids})
		if err != nil {
			return err
		}
		for _, r := range rows {
			own = append(own, r.Services)
		}
		return nil
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return out, fmt.Errorf("device %s: %w", device, ErrNoDevice)
	}
	if err != nil {
		return out, fmt.Errorf("load the releases of device %s: %w", device, err)
	}
	out.OrgID, out.OrgSlug, out.Arch = dev.OrgID, dev.OrgSlug, dev.Architecture
	for _, set := range []struct {
		into map[string]string
		raw  [][]byte
	}{{out.Own, own}, {out.Target, target}} {
		for _, raw := range set.raw {
			if err := out.add(set.into, raw); err != nil {
				return out, fmt.Errorf("decode release services of device %s: %w", device, err)
			}
		}
	}
	return out, nil
}

func (im *Images) add(into map[string]string, raw []byte) error {
	var svcs []api.ReleaseService
	if err := json.Unmarshal(raw, &svcs); err != nil {
		return err
	}
	for _, s := range svcs {
		img := targetstate.Image(s, im.Arch)
		if img == nil {
			continue
		}
		repo := Repository(img.Image)
		if !strings.HasPrefix(repo, im.OrgSlug+"/") {
			continue // only the organisation's repositories
		}
		into[string(img.Digest)] = repo
	}
	return nil
}

// Repository is an image reference's repository in the platform registry:
// without a tag or digest and without the registry host that may prefix it
// (a first component with a dot or a colon, or localhost, as engines read
// references).
func Repository(ref string) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	if first, rest, ok := strings.Cut(ref, "/"); ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		ref = rest
	}
	return ref
}
