package broker

import (
	"sync"

	"github.com/google/uuid"
	"golang.org/x/time/rate"

	mqtt "github.com/mochi-mqtt/server/v2"
)

// deviceLimits holds one token bucket per device that has published on a
// live connection. Keying by device rather than by connection means a
// session taken over by the device's new connection keeps the bucket it had.
type deviceLimits struct {
	every rate.Limit
	burst int

	mu      sync.Mutex
	buckets map[uuid.UUID]*deviceBucket
}

type deviceBucket struct {
	limiter *rate.Limiter
	// owner is the connection that last used the bucket; only its end
	// removes the bucket, so an old connection closing after a takeover
	// leaves the new one its bucket.
	owner *mqtt.Client
}

func newDeviceLimits(perSecond float64, burst int) *deviceLimits {
	return &deviceLimits{
		every:   rate.Limit(perSecond),
		burst:   burst,
		buckets: make(map[uuid.UUID]*deviceBucket),
	}
}

// allow takes one token from device's bucket on behalf of cl. It is called
// only from cl's read loop, after the connection was accepted, so release
// is certain to follow for every bucket it creates.
func (l *deviceLimits) allow(device uuid.UUID, cl *mqtt.Client) bool {
	l.mu.Lock()
	b, ok := l.buckets[device]
	if !ok {
		b = &deviceBucket{limiter: rate.NewLimiter(l.every, l.burst)}
		l.buckets[device] = b
	}
	b.owner = cl
	l.mu.Unlock()
	return b.limiter.Allow()
}

// release forgets device's bucket when cl, its last user, goes away.
func (l *deviceLimits) release(device uuid.UUID, cl *mqtt.Client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b, ok := l.buckets[device]; ok && b.owner == cl {
		delete(l.buckets, device)
	}
}

// len is for tests.
func (l *deviceLimits) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
