package bus

import (
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// ConsumeOption adjusts one Consume.
type ConsumeOption func(*consumeOpts)

type consumeOpts struct {
	assigned       func(map[string][]int32)
	lost           func()
	sessionTimeout time.Duration
}

// OnAssigned is called each time the member joins a group session, with
// the partitions it gained (possibly none: a session was still joined), before
// they are fetched. A consumer is "in the group" from its first call on.
func OnAssigned(fn func(added map[string][]int32)) ConsumeOption {
	return func(o *consumeOpts) { o.assigned = fn }
}

// OnLost is called when the member loses its partitions without a
// rebalance (its session expired, or the group fenced it); it is not in
// the group again until OnAssigned.
func OnLost(fn func()) ConsumeOption {
	return func(o *consumeOpts) { o.lost = fn }
}

// SessionTimeout is how long the group waits for a member that stopped
// heartbeating (a process killed without leaving) before giving its
// partitions to the others; franz-go's default is 45s. The heartbeat
// interval is a tenth of it.
func SessionTimeout(d time.Duration) ConsumeOption {
	return func(o *consumeOpts) { o.sessionTimeout = d }
}

func (o consumeOpts) kgo() []kgo.Opt {
	var opts []kgo.Opt
	if o.assigned != nil {
		opts = append(opts, kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, added map[string][]int32) {
			o.assigned(added)
		}))
	}
	if o.lost != nil {
		opts = append(opts, kgo.OnPartitionsLost(func(context.Context, *kgo.Client, map[string][]int32) { o.lost() }))
	}
	if o.sessionTimeout > 0 {
		opts = append(opts, kgo.SessionTimeout(o.sessionTimeout), kgo.HeartbeatInterval(o.sessionTimeout/10))
	}
	return opts
}
