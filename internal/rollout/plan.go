package rollout

import (
	"crypto/sha256"
	"encoding/binary"
	"math"
	"sort"

	"github.com/google/uuid"
)

// Candidate is a selected device, as group planning sees it.
type Candidate struct {
	ID   uuid.UUID
	Tags map[string]string
}

// Bucket01 places a device of a rollout at a stable point in [0, 1): the
// same device always lands at the same point, and devices spread evenly.
func Bucket01(rollout, device uuid.UUID) float64 {
	h := sha256.New()
	h.Write(rollout[:])
	h.Write(device[:])
	var sum [32]byte
	return float64(binary.BigEndian.Uint64(h.Sum(sum[:0])[:8])>>11) / (1 << 53)
}

// Plan puts the selected devices into groups, in group order: each group
// takes its size (a count, or a share of the selection rounded up) from
// the devices not yet placed that carry its tags, in the order of their
// stable points; the last group takes every device left. It returns each
// device's group and each group's share of the selection (which places
// late joiners, see GroupFor).
func Plan(rolloutID uuid.UUID, devices []Candidate, groups []GroupSpec) (map[uuid.UUID]int, []float64) {
	type placed struct {
		c Candidate
		p float64
	}
	order := make([]placed, len(devices))
	for i, c := range devices {
		order[i] = placed{c, Bucket01(rolloutID, c.ID)}
	}
	sort.Slice(order, func(i, j int) bool { return order[i].p < order[j].p })
	taken := make(map[uuid.UUID]int, len(devices))
	sizes := make([]int, len(groups))
	for gi, g := range groups {
		last := gi == len(groups)-1
		want := len(devices)
		switch {
		case g.Count != nil:
			want = *g.Count
		case g.Percent != nil:
			want = int(math.Ceil(*g.Percent / 100 * float64(len(devices))))
		}
		for _, d := range order {
			if !last && sizes[gi] >= want {
				break
			}
			if _, done := taken[d.c.ID]; done || !hasTags(d.c.Tags, g.Tags) {
				continue
			}
			taken[d.c.ID] = gi
			sizes[gi]++
		}
	}
	shares := make([]float64, len(groups))
	for i, n := range sizes {
		if len(devices) > 0 {
			shares[i] = float64(n) / float64(len(devices))
		} else {
			shares[i] = 1 / float64(len(groups))
		}
	}
	return taken, shares
}

func hasTags(have, want map[string]string) bool {
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}

// GroupFor is the group of a device that joins the fleet (or the rollout's
// device group) during a continuous rollout: by its stable point against
// the groups' shares, so late joiners spread over the groups as the first
// devices did, and never all into the first one. A group that has already
// ended passes the device on to the group running now (current), so it is
// still updated under watch.
func GroupFor(rolloutID, device uuid.UUID, shares []float64, current int, ended func(int) bool) int {
	p := Bucket01(rolloutID, device)
	g, acc := len(shares)-1, 0.0
	for i, s := range shares {
		acc += s
		if p < acc {
			g = i
			break
		}
	}
	if ended(g) {
		return current
	}
	return g
}
