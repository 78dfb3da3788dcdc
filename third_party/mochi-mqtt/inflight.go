// SPDX-License-Identifier: MIT
// SPDX-FileCopyrightText: 2023 mochi-mqtt, mochi-co
// SPDX-FileContributor: mochi-co

package mqtt

import (
	"errors"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/mochi-mqtt/server/v2/packets"
)

// Inflight is a map of InflightMessage keyed on packet id.
type Inflight struct {
	sync.RWMutex
	internal            map[uint16]packets.Packet // internal contains the inflight packets
	receiveQuota        int32                     // remaining inbound qos quota for flow control
	sendQuota           int32                     // remaining outbound qos quota for flow control
	maximumReceiveQuota int32                     // maximum allowed receive quota
	maximumSendQuota    int32                     // maximum allowed send quota

	// Flock's copy (see FLOCK.md, "one order"): the server's QoS 1/2
	// messages to the client, in the order they were admitted. nil until
	// the client is sent its first one.
	outbound map[uint16]outboundState
	parked   []parkedID // messages waiting for send quota or queue room, oldest first
	nextSeq  uint64
	lastID   uint16  // the packet identifier admit gave last
	ended    bool    // ClearInflights ran: the session is over and takes no more
	holder   *Client // the connection a resumed session handed the store to; nil before any
}

// outboundState is what Flock's copy knows about a QoS 1/2 message to the
// client: when it was admitted, and whether it still waits to be sent.
type outboundState struct {
	seq    uint64
	parked bool
}

// parkedID names a parked message. The seq tells an entry left behind by a
// deleted message from a newer message that reuses its packet id.
type parkedID struct {
	id  uint16
	seq uint64
}

// NewInflights returns a new instance of an Inflight packets map.
func NewInflights() *Inflight {
	return &Inflight{
		internal: map[uint16]packets.Packet{},
	}
}

// Set adds or updates an inflight packet by packet id.
func (i *Inflight) Set(m packets.Packet) bool {
	i.Lock()
	defer i.Unlock()

	_, ok := i.internal[m.PacketID]
	i.internal[m.PacketID] = m
	return !ok
}

// Get returns an inflight packet by packet id.
func (i *Inflight) Get(id uint16) (packets.Packet, bool) {
	i.RLock()
	defer i.RUnlock()

	if m, ok := i.internal[id]; ok {
		return m, true
	}

	return packets.Packet{}, false
}

// Len returns the size of the inflight messages map.
func (i *Inflight) Len() int {
	i.RLock()
	defer i.RUnlock()
	return len(i.internal)
}

// Clone returns a new instance of Inflight with the same message data.
// Flock's copy no longer uses it: a resumed session is handed the store
// itself (see handOver).
func (i *Inflight) Clone() *Inflight {
	c := NewInflights()
	i.RLock()
	defer i.RUnlock()
	for k, v := range i.internal {
		c.internal[k] = v
	}
	if i.outbound != nil {
		c.outbound = make(map[uint16]outboundState, len(i.outbound))
		for k, v := range i.outbound {
			c.outbound[k] = v
		}
	}
	c.parked = append([]parkedID(nil), i.parked...)
	c.nextSeq, c.lastID = i.nextSeq, i.lastID
	return c
}

// GetAll returns all the inflight messages.
func (i *Inflight) GetAll(immediate bool) []packets.Packet {
	i.RLock()
	defer i.RUnlock()

	m := []packets.Packet{}
	for _, v := range i.internal {
		if !immediate || (immediate && v.Expiry < 0) {
			m = append(m, v)
		}
	}

	i.sortByAdmission(m)
	return m
}

// sortByAdmission orders messages to the client as they were admitted.
// Flock's copy: upstream sorted by the low 16 bits of Created, a time in
// seconds, with an unstable sort, so a resumed session got the messages of
// any one second in random order.
func (i *Inflight) sortByAdmission(m []packets.Packet) {
	sort.SliceStable(m, func(a, b int) bool {
		sa, sb := i.outbound[m[a].PacketID].seq, i.outbound[m[b].PacketID].seq
		if sa != sb {
			return sa < sb
		}
		return m[a].Created < m[b].Created
	})
}

// NextImmediate returns the next inflight packet which is indicated to be sent immediately.
// This typically occurs when the quota has been exhausted, and we need to wait until new quota
// is free to continue sending.
//
// Flock's copy: GetAll takes the read lock itself. Taking it here too was a
// recursive read lock, which deadlocks as soon as a writer (a publisher
// adding to this client's inflight store) queues between the two: the
// broker then stopped delivering to any busy QoS 1 subscriber.
func (i *Inflight) NextImmediate() (packets.Packet, bool) {
	m := i.GetAll(true)
	if len(m) > 0 {
		return m[0], true
	}

	return packets.Packet{}, false
}

// Delete removes an in-flight message from the map. Returns true if the message existed.
func (i *Inflight) Delete(id uint16) bool {
	i.Lock()
	defer i.Unlock()

	_, ok := i.internal[id]
	delete(i.internal, id)
	delete(i.outbound, id)

	return ok
}

// TakeRecieveQuota reduces the receive quota by 1.
func (i *Inflight) DecreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) > 0 {
		atomic.AddInt32(&i.receiveQuota, -1)
	}
}

// TakeRecieveQuota increases the receive quota by 1.
func (i *Inflight) IncreaseReceiveQuota() {
	if atomic.LoadInt32(&i.receiveQuota) < atomic.LoadInt32(&i.maximumReceiveQuota) {
		atomic.AddInt32(&i.receiveQuota, 1)
	}
}

// ResetReceiveQuota resets the receive quota to the maximum allowed value.
func (i *Inflight) ResetReceiveQuota(n int32) {
	atomic.StoreInt32(&i.receiveQuota, n)
	atomic.StoreInt32(&i.maximumReceiveQuota, n)
}

// DecreaseSendQuota reduces the send quota by 1.
func (i *Inflight) DecreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) > 0 {
		atomic.AddInt32(&i.sendQuota, -1)
	}
}

// IncreaseSendQuota increases the send quota by 1.
func (i *Inflight) IncreaseSendQuota() {
	if atomic.LoadInt32(&i.sendQuota) < atomic.LoadInt32(&i.maximumSendQuota) {
		atomic.AddInt32(&i.sendQuota, 1)
	}
}

// ResetSendQuota resets the send quota to the maximum allowed value.
func (i *Inflight) ResetSendQuota(n int32) {
	atomic.StoreInt32(&i.sendQuota, n)
	atomic.StoreInt32(&i.maximumSendQuota, n)
}

// The rest of this file is Flock's copy (see FLOCK.md, "one order"). Every
// QoS 1/2 message to a client takes one path: admitted under the lock, it
// goes into the client's outbound queue when nothing older waits and the
// client has send quota, and is parked behind what waits otherwise; parked
// messages move into the same queue, oldest first, as quota and room
// return. The queue's one writer then puts them on the wire in that order.
// Upstream parked a message only when it read the quota as 0, so a message
// could take quota a PUBACK had just returned while older ones stayed
// parked, and it wrote parked messages from the reader goroutine while
// fresh ones went through the queue's writer, with no order between the two.

// errSessionEnded: admit was given a message for a session that has ended.
var errSessionEnded = errors.New("session ended")

// admit numbers m, a QoS 1/2 message to cl, with the next free packet
// identifier up to maxID, stores it, and queues it on cl's outbound queue
// or parks it. connected false parks it for a resumed session to send, as
// does a cl whose session a newer connection has taken over (publishers
// reach the old client until the new one is registered, and what it sent
// before then is what the new one is resent). queued reports that m went
// into the queue, start that the caller must start its writer. It stores
// nothing and returns errSessionEnded once the session has ended, and
// packets.ErrQuotaExceeded when no identifier is free.
func (i *Inflight) admit(cl *Client, m *packets.Packet, connected bool, maxID uint32) (queued, start bool, err error) {
	i.Lock()
	defer i.Unlock()
	if i.ended {
		return false, false, errSessionEnded
	}
	id, ok := i.freeID(maxID)
	if !ok {
		return false, false, packets.ErrQuotaExceeded
	}
	m.PacketID = id
	i.internal[id] = *m
	i.nextSeq++
	st := outboundState{seq: i.nextSeq, parked: true}
	i.dropStaleParked()
	q := &cl.State.outbound
	if connected && i.holds(cl) && len(i.parked) == 0 && i.takeSendQuota() {
		pk := *m
		if ok, s := q.push(&pk); ok {
			st.parked, queued, start = false, true, s
		} else {
			i.returnSendQuota()
		}
	}
	if st.parked {
		i.parked = append(i.parked, parkedID{id: id, seq: st.seq})
	}
	if i.outbound == nil {
		i.outbound = make(map[uint16]outboundState)
	}
	i.outbound[id] = st
	return queued, start, nil
}

// freeID returns the first packet identifier after the last one given
// that no message in the store holds, wrapping after maxID
// [MQTT-2.2.1-3].
func (i *Inflight) freeID(maxID uint32) (uint16, bool) {
	id := uint32(i.lastID)
	for n := uint32(0); n < maxID; n++ {
		if id++; id > maxID {
			id = 1
		}
		if _, used := i.internal[uint16(id)]; !used {
			i.lastID = uint16(id)
			return uint16(id), true
		}
	}
	return 0, false
}

// sendParked moves parked messages, oldest first, into cl's outbound queue
// while the client has send quota and the queue has room. It returns how
// many it moved, and start when the caller must start the queue's writer.
func (i *Inflight) sendParked(cl *Client) (n int, start bool) {
	i.Lock()
	defer i.Unlock()
	if !i.holds(cl) {
		return 0, false
	}
	q := &cl.State.outbound
	for {
		i.dropStaleParked()
		if len(i.parked) == 0 || !i.takeSendQuota() {
			break
		}
		id := i.parked[0].id
		m := i.internal[id]
		ok, s := q.push(&m)
		if !ok {
			i.returnSendQuota()
			break
		}
		i.parked = i.parked[1:]
		i.outbound[id] = outboundState{seq: i.outbound[id].seq}
		n++
		start = start || s
	}
	if len(i.parked) == 0 {
		i.parked = nil // let the backing array go
	}
	return n, start
}

// dropStaleParked removes entries of messages deleted while parked
// (expired, or acknowledged by a confused client) from the head of the
// line, so that a newer message need not wait behind nothing.
func (i *Inflight) dropStaleParked() {
	for len(i.parked) > 0 {
		p := i.parked[0]
		if st, ok := i.outbound[p.id]; ok && st.parked && st.seq == p.seq {
			return
		}
		i.parked = i.parked[1:]
	}
}

// takeSendQuota takes one unit of send quota. Only holders of i's lock take
// quota, so it cannot go below zero between the check and the take; PUBACKs
// may add some at any time. A client that set no Receive Maximum has no
// quota to respect.
func (i *Inflight) takeSendQuota() bool {
	if atomic.LoadInt32(&i.maximumSendQuota) == 0 {
		return true
	}
	if atomic.LoadInt32(&i.sendQuota) <= 0 {
		return false
	}
	atomic.AddInt32(&i.sendQuota, -1)
	return true
}

// returnSendQuota gives back a unit takeSendQuota took.
func (i *Inflight) returnSendQuota() {
	if atomic.LoadInt32(&i.maximumSendQuota) != 0 {
		atomic.AddInt32(&i.sendQuota, 1)
	}
}

// acknowledge removes the message under id for a PUBACK cl sent, unless
// the message was never sent or cl's session now belongs to a newer
// connection (see Server.processPuback).
func (i *Inflight) acknowledge(cl *Client, id uint16) bool {
	i.Lock()
	defer i.Unlock()
	if _, ok := i.internal[id]; !ok || i.outbound[id].parked || !i.holds(cl) {
		return false
	}
	delete(i.internal, id)
	delete(i.outbound, id)
	return true
}

// expire removes the expired message under id unless the client was sent
// it, which only enforced removes (see Client.ClearExpiredInflights). It
// reports whether it removed the message and whether that had been sent,
// holding a unit of send quota.
func (i *Inflight) expire(id uint16, enforced bool) (ok, sent bool) {
	i.Lock()
	defer i.Unlock()
	if _, ok = i.internal[id]; !ok {
		return false, false
	}
	st, tracked := i.outbound[id]
	sent = tracked && !st.parked
	if sent && !enforced {
		return false, false
	}
	delete(i.internal, id)
	delete(i.outbound, id)
	return true, sent
}

// unacknowledged returns what a resumed session sends again: every
// message but the parked ones (never sent, they follow in their turn), in
// the order they were admitted.
func (i *Inflight) unacknowledged() []packets.Packet {
	i.RLock()
	defer i.RUnlock()
	m := make([]packets.Packet, 0, len(i.internal))
	for id, pk := range i.internal {
		if !i.outbound[id].parked {
			m = append(m, pk)
		}
	}
	i.sortByAdmission(m)
	return m
}

// chargeSent takes, from a resumed session's fresh send quota, a unit for
// each message sent on an earlier connection and not yet acknowledged: the
// client's Receive Maximum counts them too. The quota may go below zero if
// the client now allows fewer; PUBACKs bring it back.
func (i *Inflight) chargeSent() {
	i.Lock()
	defer i.Unlock()
	if atomic.LoadInt32(&i.maximumSendQuota) == 0 {
		return
	}
	var sent int32
	for _, st := range i.outbound {
		if !st.parked {
			sent++
		}
	}
	atomic.AddInt32(&i.sendQuota, -sent)
}

// holdsOutbound reports whether id holds a message from the server to the
// client (a PUBLISH, or the PUBREL that follows its PUBREC) rather than a
// flow of the client's own.
func (i *Inflight) holdsOutbound(id uint16) bool {
	i.RLock()
	defer i.RUnlock()
	pk, ok := i.internal[id]
	return ok && (pk.FixedHeader.Type == packets.Publish || pk.FixedHeader.Type == packets.Pubrel)
}

// holds reports whether cl's connection holds the store: no newer one has
// taken its session over.
func (i *Inflight) holds(cl *Client) bool {
	return i.holder == nil || i.holder == cl
}

// handOver gives the store of from's session to to, a new connection
// resuming it, unless the session has ended.
func (i *Inflight) handOver(from, to *Client) bool {
	i.Lock()
	defer i.Unlock()
	if i.ended || !i.holds(from) {
		return false
	}
	i.holder = to
	return true
}

// end marks the session over for cl, unless cl has handed the store to a
// new connection: admit stores nothing more, so a message that races with
// ClearInflights is counted as dropped rather than kept in a store nobody
// will read.
func (i *Inflight) end(cl *Client) bool {
	i.Lock()
	defer i.Unlock()
	if !i.holds(cl) {
		return false
	}
	i.ended = true
	return true
}
