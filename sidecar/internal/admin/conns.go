package admin

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// The admin port is on every address of the pod (the kubelet and Prometheus
// reach the pod IP), so anything that can reach the pod can open
// connections to it. Without limits, each connection that sends half a
// request header costs a goroutine, buffers and a descriptor until the
// header timeout: 15,000 of them held 185 MB. So:
//
//   - at most maxConns connections are open; a new one past that closes the
//     oldest that is not being answered (waiting for its request header, or
//     idle between requests) rather than being refused, so that a probe,
//     which sends its request at once and is answered in microseconds,
//     still gets through a flood of connections that never finish theirs;
//   - that oldest one is taken from the address holding the most
//     connections: a flood comes from few addresses, and the kubelet's
//     probes from the node's, so a probe is not closed by a flood that
//     outpaces it (a machine too busy to read its request within the time
//     maxConns flood connections take to arrive);
//   - a request header must come within readHeaderTimeout and fit in
//     maxHeaderBytes.
const (
	maxConns          = 64
	readHeaderTimeout = 2 * time.Second
	maxHeaderBytes    = 8 << 10
)

// limitListener keeps at most max connections open, closing the oldest idle
// one to make room for a new one.
type limitListener struct {
	net.Listener
	max     int
	evicted func() // counts a connection closed to make room

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

func newLimitListener(l net.Listener, max int, evicted func()) *limitListener {
	return &limitListener{Listener: l, max: max, evicted: evicted, conns: make(map[*trackedConn]struct{})}
}

// trackedConn is an accepted connection; busy while a handler answers on it.
type trackedConn struct {
	net.Conn
	l        *limitListener
	from     netip.Addr
	accepted time.Time
	busy     atomic.Bool
	once     sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.l.mu.Lock()
		delete(c.l.conns, c)
		c.l.mu.Unlock()
	})
	return c.Conn.Close()
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		// Let the connection accepted last read its request before the
		// next is accepted: under a flood of connections, the accept loop
		// would otherwise run its whole time slice, and the connections
		// it made room for would be closed again before they ran, a
		// probe's among them.
		runtime.Gosched()
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c := l.admit(nc); c != nil {
			return c, nil
		}
		// Every connection is being answered: this one waits for nothing.
		l.evicted()
		_ = nc.Close()
	}
}

// admit tracks nc, closing a connection not being answered if max are open
// already (victimLocked); it returns nil when every one is being answered.
func (l *limitListener) admit(nc net.Conn) *trackedConn {
	c := &trackedConn{Conn: nc, l: l, accepted: time.Now()}
	if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		c.from = a.AddrPort().Addr().Unmap()
	}
	l.mu.Lock()
	var victim *trackedConn
	if len(l.conns) >= l.max {
		if victim = l.victimLocked(); victim == nil {
			l.mu.Unlock()
			return nil
		}
		delete(l.conns, victim)
	}
	l.conns[c] = struct{}{}
	l.mu.Unlock()
	if victim != nil {
		l.evicted()
		_ = victim.Close()
	}
	return c
}

// victimLocked picks the connection to close for a new one: the oldest not
// being answered, of the address with the most such connections. Called
// with mu held; at most max connections to look at.
func (l *limitListener) victimLocked() *trackedConn {
	idle := make(map[netip.Addr]int)
	for o := range l.conns {
		if !o.busy.Load() {
			idle[o.from]++
		}
	}
	var victim *trackedConn
	for o := range l.conns {
		if o.busy.Load() {
			continue
		}
		if victim == nil || idle[o.from] > idle[victim.from] ||
			idle[o.from] == idle[victim.from] && o.accepted.Before(victim.accepted) {
			victim = o
		}
	}
	return victim
}

type connKey struct{}

// connContext is http.Server.ConnContext: it lets a request find its
// connection.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*trackedConn); ok {
		return context.WithValue(ctx, connKey{}, tc)
	}
	return ctx
}

// markBusy keeps a connection from being closed to make room while its
// request is answered.
func markBusy(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tc, ok := r.Context().Value(connKey{}).(*trackedConn); ok {
			tc.busy.Store(true)
			defer tc.busy.Store(false)
		}
		h.ServeHTTP(w, r)
	})
}
