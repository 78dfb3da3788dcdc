package streams

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/flock-io/flock-api/internal/bus"
)

// Kind is the family of a stream: which topics feed it. Ids name their
// kind, so an id is only taken back by a stream of the same kind.
type Kind uint8

const (
	// KindEvents feeds the organisation, fleet, device group and device
	// streams.
	KindEvents Kind = iota + 1
	// KindRollout feeds rollout streams.
	KindRollout
	// KindLogs feeds device log streams.
	KindLogs
)

// hubTopics are every topic the hub reads, in a fixed order: a topic's
// index here is its index in every position vector of the hub.
var hubTopics = []string{
	bus.TopicDeviceState,
	bus.TopicDeviceConnectivity,
	bus.TopicDeviceEvents,
	bus.TopicCommandEvents,
	bus.TopicRolloutEvents,
	bus.TopicDeviceLogs,
}

const (
	tState = iota
	tConnectivity
	tDeviceEvents
	tCommandEvents
	tRollout
	tLogs
	numTopics
)

// kindTopics lists each kind's topics as hub topic indexes, in the order
// ids encode them. The order is part of the id format: never reorder,
// only append (and bump idVersion when that is not enough).
var kindTopics = [...][]int{
	KindEvents:  {tState, tConnectivity, tDeviceEvents, tCommandEvents, tRollout},
	KindRollout: {tRollout, tDeviceEvents},
	KindLogs:    {tLogs},
}

func (k Kind) valid() bool { return k >= KindEvents && k <= KindLogs }

func (k Kind) String() string {
	switch k {
	case KindEvents:
		return "events"
	case KindRollout:
		return "rollout"
	case KindLogs:
		return "logs"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Position is where a stream stood: for each partition of its kind's
// topics, the offset of the first record not yet considered for the
// client (every record before it was either sent or filtered out). It is
// what an event id encodes. Offs is indexed by hub topic; topics outside
// the kind are nil.
type Position struct {
	Kind Kind
	Offs [numTopics][]int64
	// Within, when set, says that the record at Offs[Within.Topic]
	// [Within.Partition] was split into several events (log lines) and
	// the first Skip of them were sent.
	Within *Within
	// History, when set (log streams only), says the client was still in
	// the history part of a log stream, after this line; Offs is then
	// unused.
	History *LogCursor
}

// Within is a record partly sent.
type Within struct {
	Topic     int
	Partition int32
	Skip      int
}

// LogCursor is the sort key of a stored log line (as the telemetry
// store's keyset cursor).
type LogCursor struct {
	TS      time.Time
	Service string
	Seq     int64
}

// The first byte of every id; a new encoding gets a new version and the
// old one stays readable while ids of it may be held by clients.
const idVersion = 1

const (
	formOffsets = 0
	formHistory = 1
)

// Limits a decoded id must respect, so a forged one cannot make the
// server allocate much.
const (
	maxPartitions = 4096
	maxService    = 255
)

// ErrBadID is returned for ids this server did not make.
var ErrBadID = errors.New("not an event id of this stream")

// Encode returns the id for p: base64url of a version byte, the kind, the
// form, then per topic of the kind the partition count and each offset as
// varints (or the log cursor for history ids).
func (p *Position) Encode() string {
	var buf [256]byte
	b := buf[:0]
	b = append(b, idVersion, byte(p.Kind))
	if p.History != nil {
		b = append(b, formHistory)
		b = binary.AppendVarint(b, p.History.TS.UnixMicro())
		b = binary.AppendUvarint(b, uint64(len(p.History.Service)))
		b = append(b, p.History.Service...)
		b = binary.AppendVarint(b, p.History.Seq)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	b = append(b, formOffsets)
	for _, t := range kindTopics[p.Kind] {
		offs := p.Offs[t]
		b = binary.AppendUvarint(b, uint64(len(offs)))
		for _, o := range offs {
			b = binary.AppendUvarint(b, uint64(o))
		}
	}
	if w := p.Within; w != nil {
		b = binary.AppendUvarint(b, uint64(slices.Index(kindTopics[p.Kind], w.Topic)+1))
		b = binary.AppendUvarint(b, uint64(w.Partition))
		b = binary.AppendUvarint(b, uint64(w.Skip))
	} else {
		b = append(b, 0)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// Decode reads an id a stream of kind k handed out.
func Decode(id string, k Kind) (*Position, error) {
	raw, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil || len(raw) < 3 {
		return nil, ErrBadID
	}
	if raw[0] != idVersion {
		return nil, fmt.Errorf("%w: unknown id version %d", ErrBadID, raw[0])
	}
	if Kind(raw[1]) != k {
		return nil, fmt.Errorf("%w: it is an id of a %s stream, this is a %s stream", ErrBadID, Kind(raw[1]), k)
	}
	r := reader{b: raw[3:]}
	p := &Position{Kind: k}
	switch raw[2] {
	case formHistory:
		if k != KindLogs {
			return nil, ErrBadID
		}
		ts := r.varint()
		n := r.uvarint()
		if n > maxService {
			return nil, ErrBadID
		}
		svc := r.bytes(int(n))
		seq := r.varint()
		if r.err || len(r.b) != 0 {
			return nil, ErrBadID
		}
		p.History = &LogCursor{TS: time.UnixMicro(ts).UTC(), Service: string(svc), Seq: seq}
		return p, nil
	case formOffsets:
	default:
		return nil, ErrBadID
	}
	for _, t := range kindTopics[k] {
		n := r.uvarint()
		if n > maxPartitions {
			return nil, ErrBadID
		}
		offs := make([]int64, 0, min(n, uint64(len(r.b))))
		for range n {
			o := r.uvarint()
			if o > 1<<62 {
				return nil, ErrBadID
			}
			offs = append(offs, int64(o))
		}
		p.Offs[t] = offs
	}
	wt := r.uvarint()
	if wt > 0 {
		if int(wt) > len(kindTopics[k]) {
			return nil, ErrBadID
		}
		t := kindTopics[k][wt-1]
		part := r.uvarint()
		skip := r.uvarint()
		if part >= uint64(len(p.Offs[t])) || skip == 0 || skip > 1<<20 {
			return nil, ErrBadID
		}
		p.Within = &Within{Topic: t, Partition: int32(part), Skip: int(skip)}
	}
	if r.err || len(r.b) != 0 {
		return nil, ErrBadID
	}
	return p, nil
}

type reader struct {
	b   []byte
	err bool
}

func (r *reader) uvarint() uint64 {
	if r.err {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = true
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes(n int) []byte {
	if r.err || n > len(r.b) {
		r.err = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

// clone copies the offsets of p's kind.
func (p *Position) clone() *Position {
	c := &Position{Kind: p.Kind}
	for _, t := range kindTopics[p.Kind] {
		c.Offs[t] = slices.Clone(p.Offs[t])
	}
	if p.Within != nil {
		w := *p.Within
		c.Within = &w
	}
	return c
}

// reached reports whether the hub position h has considered every record
// p has (so a client at p loses nothing by going live from h).
func (p *Position) reachedBy(h *[numTopics][]int64) bool {
	for _, t := range kindTopics[p.Kind] {
		for part, o := range p.Offs[t] {
			if part >= len(h[t]) {
				continue // a partition the hub does not read
			}
			need := o
			if w := p.Within; w != nil && w.Topic == t && int(w.Partition) == part {
				need = o + 1
			}
			if h[t][part] < need {
				return false
			}
		}
	}
	return true
}
