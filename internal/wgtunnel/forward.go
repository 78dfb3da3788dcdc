package wgtunnel

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/flock-io/flock-api/internal/netpipe"
)

// Forward relays each connection accepted on l to the TCP address to, until
// ctx ends (then it returns nil after closing l and every relayed connection)
// or Accept fails.
func Forward(ctx context.Context, l net.Listener, to string) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			conns[c] = struct{}{}
		} else {
			delete(conns, c)
		}
	}
	stop := context.AfterFunc(ctx, func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	defer stop()
	defer wg.Wait()
	var d net.Dialer
	for {
		in, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("wgtunnel: forward to %s: accept: %w", to, err)
		}
		track(in, true)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer track(in, false)
			defer in.Close()
			out, err := d.DialContext(ctx, "tcp", to)
			if err != nil {
				return
			}
			track(out, true)
			defer track(out, false)
			defer out.Close()
			netpipe.Pipe(in, out, nil, nil)
		}()
	}
}
