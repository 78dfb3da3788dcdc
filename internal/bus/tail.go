package bus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Offsets are one offset per partition of each topic: Offsets[topic][p] is
// partition p's. A partition the map has no entry for is not read.
type Offsets map[string][]int64

// Clone returns a deep copy.
func (o Offsets) Clone() Offsets {
	c := make(Offsets, len(o))
	for t, ps := range o {
		c[t] = slices.Clone(ps)
	}
	return c
}

// StartOffsets returns the oldest offset each partition of topics still
// holds: retention has dropped everything before it.
func (b *Bus) StartOffsets(ctx context.Context, topics ...string) (Offsets, error) {
	l, err := kadm.NewClient(b.client).ListStartOffsets(ctx, topics...)
	return b.offsets(l, err, "start", topics)
}

// EndOffsets returns the offset the next record of each partition of
// topics will get.
func (b *Bus) EndOffsets(ctx context.Context, topics ...string) (Offsets, error) {
	l, err := kadm.NewClient(b.client).ListEndOffsets(ctx, topics...)
	return b.offsets(l, err, "end", topics)
}

// OffsetsAfter returns, per partition of topics, the first offset whose
// record the broker timestamped at or after t (the end offset when none
// is).
func (b *Bus) OffsetsAfter(ctx context.Context, t time.Time, topics ...string) (Offsets, error) {
	l, err := kadm.NewClient(b.client).ListOffsetsAfterMilli(ctx, t.UnixMilli(), topics...)
	return b.offsets(l, err, "timestamp", topics)
}

func (b *Bus) offsets(l kadm.ListedOffsets, err error, which string, topics []string) (Offsets, error) {
	if err != nil {
		return nil, fmt.Errorf("list %s offsets of %v at %s: %w", which, topics, b.where(), err)
	}
	out := make(Offsets, len(topics))
	for _, t := range topics {
		ps, ok := l[t]
		if !ok {
			return nil, fmt.Errorf("list %s offsets at %s: topic %s does not exist", which, b.where(), t)
		}
		offs := make([]int64, len(ps))
		for p, lo := range ps {
			if lo.Err != nil {
				return nil, fmt.Errorf("list %s offsets of %s at %s: %w", which, t, b.where(), lo.Err)
			}
			if p < 0 || int(p) >= len(ps) {
				return nil, fmt.Errorf("list %s offsets of %s at %s: partitions are not numbered 0..%d", which, t, b.where(), len(ps)-1)
			}
			offs[p] = lo.Offset
		}
		out[t] = offs
	}
	return out, nil
}

// TailRecord is a record with where it sits.
type TailRecord struct {
	Record
	Partition int32
	Offset    int64
	// Timestamp is the broker's (or producer's) time of the record.
	Timestamp time.Time
}

// Tail reads chosen partitions from chosen offsets without a consumer
// group: nothing is committed and no other reader is affected, so every
// API replica can read every partition. Its owner must Close it.
type Tail struct {
	b  *Bus
	cl *kgo.Client
}

// TailOptions tune a Tail.
type TailOptions struct {
	// MaxWait bounds how long the broker holds a fetch that has nothing to
	// return; default 500ms.
	MaxWait time.Duration
}

// Tail starts reading each partition of from at its offset; a partition
// whose offset is negative is not read. Offsets below what retention kept
// start at the oldest record held (check StartOffsets first to know what
// was lost); offsets past the end wait for records there.
func (b *Bus) Tail(from Offsets, o TailOptions) (*Tail, error) {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	parts := map[string]map[int32]kgo.Offset{}
	for t, offs := range from {
		for p, off := range offs {
			if off < 0 {
				continue
			}
			if parts[t] == nil {
				parts[t] = map[int32]kgo.Offset{}
			}
			parts[t][int32(p)] = kgo.NewOffset().At(off)
		}
	}
	if o.MaxWait <= 0 {
		o.MaxWait = fetchMaxWait
	}
	cl, err := kgo.NewClient(b.baseOpts(
		kgo.ConsumePartitions(parts),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(o.MaxWait),
	)...)
	if err != nil {
		return nil, fmt.Errorf("tail: kafka client for %s: %w", b.where(), err)
	}
	return &Tail{b: b, cl: cl}, nil
}

// Poll waits for the next records (in order within each partition). It
// returns ctx's error when ctx ends and ErrClosed when the Bus closes.
func (t *Tail) Poll(ctx context.Context) ([]TailRecord, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(t.b.closing, cancel)
	defer stop()
	for {
		fetches := t.cl.PollFetches(ctx)
		if fetches.IsClientClosed() || t.b.closing.Err() != nil {
			return nil, ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var ferr error
		fetches.EachError(func(topic string, partition int32, err error) {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return
			}
			// franz-go retries these itself; they are worth a line, not a stop.
			t.b.log.Warn("kafka tail fetch error", "topic", topic, "partition", partition, "err", err)
			ferr = err
		})
		krecs := fetches.Records()
		if len(krecs) == 0 {
			if ferr != nil {
				// Do not spin on a broker that keeps failing.
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
			continue
		}
		out := make([]TailRecord, len(krecs))
		for i, kr := range krecs {
			out[i] = TailRecord{Record: fromKgo(kr), Partition: kr.Partition, Offset: kr.Offset, Timestamp: kr.Timestamp}
		}
		return out, nil
	}
}

// Close stops reading.
func (t *Tail) Close() { t.cl.Close() }
