package streams

import (
	"strings"
	"sync/atomic"

	"github.com/google/uuid"
)

// Filter is what one stream wants. Org is required; every other zero
// field means "any".
type Filter struct {
	Org    uuid.UUID
	Fleet  uuid.UUID
	Device uuid.UUID
	// Members, when not nil, keeps only these devices (a device group's;
	// the stream refreshes it while it runs).
	Members *atomic.Pointer[map[uuid.UUID]struct{}]
	// Rollout keeps that rollout's records, and the device.update events
	// of Fleet about Release (the devices taking the rollout).
	Rollout uuid.UUID
	Release uuid.UUID
	// Types keeps these event types; zero keeps every type.
	Types Types
	// Log lines: Service keeps one service's; Contains (lower case) keeps
	// lines holding it, ignoring case.
	Service  string
	Contains string
}

// SetMembers replaces the device set of a group filter.
func (f *Filter) SetMembers(ids []uuid.UUID) {
	m := make(map[uuid.UUID]struct{}, len(ids))
	for _, id := range ids {
		m[id] = struct{}{}
	}
	if f.Members == nil {
		f.Members = new(atomic.Pointer[map[uuid.UUID]struct{}])
	}
	f.Members.Store(&m)
}

// match reports whether r is for a stream of kind k with this filter. The
// hub has checked the organisation already.
func (f *Filter) match(k Kind, r *record) bool {
	typ := topicType[r.topic]
	if f.Types != 0 && !f.Types.Has(typ) {
		return false
	}
	switch k {
	case KindRollout:
		if r.topic == tRollout {
			return r.rollout == f.Rollout
		}
		return r.fleet == f.Fleet && r.release == f.Release && r.release != uuid.Nil
	case KindLogs:
		return r.device == f.Device
	}
	if f.Fleet != uuid.Nil && r.fleet != f.Fleet {
		return false
	}
	if f.Device != uuid.Nil && r.device != f.Device {
		return false
	}
	if f.Members != nil {
		if r.device == uuid.Nil {
			return false
		}
		m := f.Members.Load()
		if m == nil {
			return false
		}
		if _, ok := (*m)[r.device]; !ok {
			return false
		}
	}
	return true
}

// matchLine applies the log filters to one line.
func (f *Filter) matchLine(l *logLine) bool {
	if f.Service != "" && l.Service != f.Service {
		return false
	}
	return f.Contains == "" || containsFold(l.Line, f.Contains)
}

// containsFold reports whether s holds lower (already lower case),
// ignoring case, as the store's ILIKE does for ASCII and most of Unicode.
func containsFold(s, lower string) bool {
	return strings.Contains(strings.ToLower(s), lower)
}
