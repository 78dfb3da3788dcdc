// SPDX-License-Identifier: MIT
// Flock's copy: see FLOCK.md.

package mqtt

import (
	"sync"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/packets"
)

// outboundQueue holds the packets waiting to be written to one client, and
// runs a writer goroutine only while it holds any.
//
// Upstream gave every client a channel buffered to MaximumClientWritesPending
// and a WriteLoop goroutine for its whole life. An idle device connection
// then paid for the channel's buffer and a second goroutine stack, most of
// the broker's memory per connection; here an idle client holds neither,
// and the limit only bounds how far the queue may grow.
type outboundQueue struct {
	mu      sync.Mutex
	pks     []*packets.Packet
	head    int
	limit   int
	writing bool // a writer goroutine owns the queue
	// held: no writer may start yet. A new client's queue is held until
	// its CONNACK and, for a resumed session, the messages it is owed have
	// been written, so that nothing published meanwhile goes before them.
	held bool
}

// keepCapacity: a drained queue keeps a buffer up to this many packets, so
// a busy subscriber does not reallocate for every burst while an idle one
// gives a large buffer back.
const keepCapacity = 64

// push appends pk unless the queue holds limit packets. start reports that
// no writer runs: the caller must start one (cl.writeQueued).
func (q *outboundQueue) push(pk *packets.Packet) (ok, start bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pks)-q.head >= q.limit {
		return false, false
	}
	q.pks = append(q.pks, pk)
	if !q.writing && !q.held {
		q.writing = true
		start = true
	}
	return true, start
}

// open lets writers start. start reports that packets wait and no writer
// runs: the caller must start one.
func (q *outboundQueue) open() (start bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.held = false
	if !q.writing && q.head < len(q.pks) {
		q.writing = true
		start = true
	}
	return start
}

// pop takes the oldest packet. When the queue is empty it returns false
// and the writer must exit: the next push starts a new one.
func (q *outboundQueue) pop() (*packets.Packet, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.pks) {
		q.writing = false
		q.head = 0
		if cap(q.pks) > keepCapacity {
			q.pks = nil
		} else {
			q.pks = q.pks[:0]
		}
		return nil, false
	}
	pk := q.pks[q.head]
	q.pks[q.head] = nil
	q.head++
	return pk, true
}

// Len is the number of packets waiting.
func (q *outboundQueue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pks) - q.head
}

// writeQueued writes queued packets in order until the queue is empty.
// Once the client has stopped, what is left is discarded, as upstream's
// WriteLoop did when the client's open context ended.
func (cl *Client) writeQueued() {
	for {
		pk, ok := cl.State.outbound.pop()
		if !ok {
			// Messages parked while the queue was full wait for its room.
			if cl.sendParked() {
				continue // this goroutine is the queue's writer again
			}
			return
		}
		if cl.Closed() {
			atomic.AddInt32(&cl.State.outboundQty, -1)
			continue
		}
		if err := cl.WritePacket(*pk); err != nil {
			cl.ops.log.Debug("failed publishing packet", "error", err, "client", cl.ID, "packet", pk)
		}
		atomic.AddInt32(&cl.State.outboundQty, -1)
	}
}

// sendParked moves the client's parked messages into its outbound queue as
// far as its send quota and the queue's room allow (see Inflight.admit).
// start reports that the caller must run the queue's writer.
func (cl *Client) sendParked() (start bool) {
	if cl.Closed() {
		return false // a resumed session sends them
	}
	n, start := cl.State.Inflight.sendParked(cl)
	atomic.AddInt32(&cl.State.outboundQty, int32(n))
	return start
}

// openOutbound starts delivery to a client that has been sent its CONNACK
// and, on a resumed session, what it was owed (see outboundQueue.held).
func (cl *Client) openOutbound() {
	start := cl.State.outbound.open()
	if cl.sendParked() || start {
		go cl.writeQueued()
	}
}
