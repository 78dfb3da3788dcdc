// Package netpipe joins two connections: the tunnel's relays (a device's
// overlay port to a local service, an API session to a device, one
// replica's internal dial to another's) all copy both ways the same way.
package netpipe

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// Pipe copies both ways until both directions end, passing each clean EOF
// on as a half-close (so ssh and scp end cleanly). aToB and bToA, when not
// nil, count the bytes each way as they pass, for a caller that reports
// them while the stream runs.
func Pipe(a, b net.Conn, aToB, bToA *atomic.Int64) {
	if aToB == nil {
		aToB = new(atomic.Int64)
	}
	if bToA == nil {
		bToA = new(atomic.Int64)
	}
	var wg sync.WaitGroup
	half := func(dst, src net.Conn, n *atomic.Int64) {
		defer wg.Done()
		_, err := io.Copy(counter{dst, n}, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && err == nil {
			if cw.CloseWrite() == nil {
				return
			}
		}
		dst.Close()
		src.Close()
	}
	wg.Add(2)
	go half(b, a, aToB)
	go half(a, b, bToA)
	wg.Wait()
}

// counter counts what is written through it, so the caller can read the
// figures while the copy runs.
type counter struct {
	w io.Writer
	n *atomic.Int64
}

func (c counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}
