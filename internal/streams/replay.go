package streams

import (
	"context"
	"fmt"
	"strings"

	"github.com/flock-io/flock-api/internal/bus"
)

// replay sends what f matches in from..to with a reader of its own, in
// offset order within each partition, after a gap event if retention
// dropped part of the range. It stops early, returning where it got, when
// the hub dropped s because its queue filled meanwhile; the caller
// subscribes again from there.
func (h *Hub) replay(ctx context.Context, s *Sub, from, to *Position, emit func(*Event) error, flush func() error) (*Position, error) {
	k := from.Kind
	names := make([]string, 0, len(kindTopics[k]))
	for _, t := range kindTopics[k] {
		if to.Offs[t] != nil {
			names = append(names, hubTopics[t])
		}
	}
	cur := &Position{Kind: k}
	if len(names) == 0 {
		return to.clone(), nil
	}
	starts, err := h.bus.StartOffsets(ctx, names...)
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	within := from.Within
	var lost []string
	var lostN int64
	tailFrom := bus.Offsets{}
	remaining := 0
	for _, t := range kindTopics[k] {
		target := to.Offs[t]
		row := make([]int64, len(target))
		start := starts[hubTopics[t]]
		for p := range target {
			var st int64
			if p < len(start) {
				st = start[p]
			}
			o := st // a partition the id did not know: all of it is new
			if p < len(from.Offs[t]) {
				o = from.Offs[t][p]
			}
			// An id ahead of this hub (another replica was further on and
			// this one did not catch up within aheadWait) replays nothing
			// here; the live events may repeat a few.
			o = min(o, target[p])
			// Records the hub had not read yet when the stream registered
			// and that went since are the hub's gap to announce, not this.
			if end := min(st, target[p]); o < end {
				lost = append(lost, fmt.Sprintf("%s partition %d offsets %d to %d", hubTopics[t], p, o, end-1))
				lostN += end - o
				o = end
			}
			if within != nil && within.Topic == t && int(within.Partition) == p &&
				(p >= len(from.Offs[t]) || o != from.Offs[t][p]) {
				within = nil
			}
			row[p] = o
			if o < target[p] {
				remaining++
			}
		}
		cur.Offs[t] = row
		tailFrom[hubTopics[t]] = make([]int64, len(row))
		for p := range row {
			if row[p] < target[p] {
				tailFrom[hubTopics[t]][p] = row[p]
			} else {
				tailFrom[hubTopics[t]][p] = -1
			}
		}
	}
	cur.Within = within
	if len(lost) > 0 {
		detail := fmt.Sprintf("the bus no longer holds %d records after the given id (retention dropped them; some may have been for this stream): %s",
			lostN, strings.Join(lost, "; "))
		if err := emit(Control(TypeGap, cur.Encode(), "retention", detail)); err != nil {
			return nil, err
		}
		if err := flush(); err != nil {
			return nil, err
		}
	}
	if remaining == 0 {
		cur.Within = nil
		return cur, nil
	}
	tail, err := h.bus.Tail(tailFrom, bus.TailOptions{MaxWait: h.wait})
	if err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	defer tail.Close()
	for remaining > 0 {
		recs, err := tail.Poll(ctx)
		if err != nil {
			return nil, fmt.Errorf("replay: %w", err)
		}
		for i := range recs {
			tr := &recs[i]
			t := topicIndex(tr.Topic)
			if t < 0 || int(tr.Partition) >= len(cur.Offs[t]) {
				continue
			}
			p := tr.Partition
			target := to.Offs[t][p]
			if cur.Offs[t][p] >= target || tr.Offset < cur.Offs[t][p] {
				continue
			}
			if tr.Offset >= target {
				cur.Offs[t][p] = target
				remaining--
				continue
			}
			skip := 0
			if w := cur.Within; w != nil && w.Topic == t && w.Partition == p {
				if tr.Offset == cur.Offs[t][p] {
					skip = w.Skip
				}
				cur.Within = nil
			}
			cur.Offs[t][p] = tr.Offset + 1
			if cur.Offs[t][p] >= target {
				remaining--
			}
			r, err := decode(t, tr)
			if err != nil || r.org != s.f.Org || !s.f.match(k, r) {
				continue
			}
			for j, ev := range r.events(k, &cur.Offs, skip) {
				if r.lines != nil && !s.f.matchLine(&r.lines[skip+j]) {
					continue
				}
				if err := emit(ev); err != nil {
					return nil, err
				}
			}
		}
		if err := flush(); err != nil {
			return nil, err
		}
		if s.overflowed() {
			return cur, nil
		}
	}
	return cur, nil
}
