package upstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// poolConn is what the pool's bookkeeping needs of a connection, a DoT's
// conn or a DoH's dohConn.
type poolConn interface {
	comparable
	isDead() bool
	// deathCause is why the upstream ended it (nil while it lives).
	deathCause() error
	// retiredSince is when it was retired (zero if it was not).
	retiredSince() time.Time
	// evict closes it now, its queries resent elsewhere.
	evict(why string)
}

// pool is the bookkeeping a DoT and a DoH upstream share (pool.go and
// dohpool.go say how each uses it): the usable connections, published
// copy-on-write so that a query picks one without a lock; the retired ones
// still draining; the slot count, which never exceeds size; the one dial in
// progress; and the channel that wakes the queries waiting for any of it to
// change.
type pool[C poolConn] struct {
	size   int
	gauge  prometheus.Gauge       // connections open
	launch func(dl *dialState[C]) // runs a dial in a goroutine of the upstream's; the dial ends in finishDial

	active      atomic.Pointer[[]C] // usable connections, copy-on-write under mu
	total       atomic.Int32        // open (active or draining) plus dialing: never above size
	noGrowUntil atomic.Int64        // unix nanos: after a failed dial, no dial merely to spread load

	// mu guards the fields below. Lock order: mu before a connection's
	// lock, never the reverse.
	mu       sync.Mutex
	draining []C
	dialing  *dialState[C] // the one dial in progress, shared by every query that waits
	changed  chan struct{} // closed and replaced whenever the pool changes
	closed   bool
}

func (p *pool[C]) init(size int, gauge prometheus.Gauge, launch func(*dialState[C])) {
	p.size, p.gauge, p.launch, p.changed = size, gauge, launch, make(chan struct{})
}

type dialState[C poolConn] struct {
	finished bool // guarded by pool.mu, like the fields below
	err      error
	conn     C // what a successful dial produced
	hasConn  bool
}

// failure is why a finished dial left its waiters nothing to use, or nil:
// the dial's error, or the death of its connection if the upstream dropped
// it before answering anything, whether that death came before the dial
// finished (then it is dl.err) or after the connection was published and
// before a waiter got on it. Either way the waiters were caught on a new
// connection lost, and get its error, the one value that counts that loss
// once in the query's resend and the upstream's run (newconn.go); dialing
// again instead would spend one more new connection per query than that
// rule allows, and against an upstream that hangs up on every handshake,
// one more per attempt. A connection that served and then closed is a
// pooled one ending normally; its waiters may dial again. Called with
// pool.mu held.
func (dl *dialState[C]) failure() error {
	if dl.err != nil {
		return dl.err
	}
	if dl.hasConn {
		if cause := dl.conn.deathCause(); errors.Is(cause, ErrUnreachable) || errors.Is(cause, errNewConnLost) {
			return cause
		}
	}
	return nil
}

func (p *pool[C]) activeConns() []C {
	if a := p.active.Load(); a != nil {
		return *a
	}
	return nil
}

func (p *pool[C]) publishLocked(conns []C) { p.active.Store(&conns) }

// notifyLocked wakes every query waiting for the pool to change.
func (p *pool[C]) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *pool[C]) notify() {
	p.mu.Lock()
	p.notifyLocked()
	p.mu.Unlock()
}

// grow dials one more connection to spread load, if the pool has room.
func (p *pool[C]) grow() {
	if time.Now().UnixNano() < p.noGrowUntil.Load() {
		return
	}
	p.mu.Lock()
	if !p.closed && p.dialing == nil && int(p.total.Load()) < p.size {
		p.startDialLocked()
	}
	p.mu.Unlock()
}

func (p *pool[C]) startDialLocked() *dialState[C] {
	dl := &dialState[C]{}
	p.dialing = dl
	p.total.Add(1)
	p.launch(dl)
	return dl
}

// finishDial records the end of dl, which made c or failed with err, and
// publishes c. It reports whether the upstream was closed meanwhile, in
// which case the caller shuts c down (its slot is freed then).
func (p *pool[C]) finishDial(dl *dialState[C], c C, err error) (closed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialing = nil
	dl.finished, dl.conn, dl.hasConn = true, c, err == nil
	closed = p.closed
	switch {
	case err != nil:
		dl.err = err
		p.total.Add(-1)
		p.noGrowUntil.Store(time.Now().Add(growBackoff).UnixNano())
	case closed:
		dl.err = ErrClosed // c still holds its slot; its shutdown frees it
	case c.isDead():
		// The upstream completed the handshake and hung up at once (at its
		// connection limit, or broken); removeConn has freed the slot. The
		// queries waiting for this dial get that as its error (the
		// connection's own, ErrUnreachable, one value for all of them),
		// rather than each dialing again at once: a hang-up per handshake
		// would otherwise be a dial loop until their deadlines.
		dl.err = c.deathCause()
		p.noGrowUntil.Store(time.Now().Add(growBackoff).UnixNano())
	default:
		p.publishLocked(append(slices.Clone(p.activeConns()), c))
	}
	p.notifyLocked()
	return closed
}

// retired moves c from the usable connections to the draining ones. If c was
// busy and nothing else is usable, a replacement is dialed at once (pool
// permitting) rather than by the next query. If the pool has no room for
// one (a size of 1, or every connection retired at once: they reach their
// max age in the same tick when the second was dialed moments after the
// first, and a trust change retires them all), every new query would wait
// for a drain, which a single slow name stretches to drainGrace and beyond;
// so the connection retired first is closed now instead, its queries resent
// on the replacement.
func (p *pool[C]) retired(c C, busy bool) {
	p.mu.Lock()
	p.unpublishLocked(c)
	if c.isDead() {
		p.mu.Unlock()
		return // already closed and removed
	}
	p.draining = append(p.draining, c)
	var evict C
	var hasEvict bool
	if busy && !p.closed && len(p.activeConns()) == 0 && p.dialing == nil {
		if int(p.total.Load()) < p.size {
			p.startDialLocked()
		} else {
			evict, hasEvict = p.draining[0], true
		}
	}
	p.notifyLocked()
	p.mu.Unlock()
	if hasEvict {
		evict.evict("retired connection closed to make room for a replacement")
	}
}

func (p *pool[C]) unpublishLocked(c C) {
	active := p.activeConns()
	if i := slices.Index(active, c); i >= 0 {
		p.publishLocked(slices.Delete(slices.Clone(active), i, i+1))
	}
}

// removeConn forgets c, which has died, and frees its slot.
func (p *pool[C]) removeConn(c C) {
	p.mu.Lock()
	p.unpublishLocked(c)
	if i := slices.Index(p.draining, c); i >= 0 {
		p.draining = slices.Delete(p.draining, i, i+1)
	}
	p.total.Add(-1)
	p.notifyLocked()
	p.mu.Unlock()
	p.gauge.Dec()
}

// cutDrains closes the retired connections still draining drainGrace after
// their retirement while the pool is full, so that a retired connection
// with a lost query does not hold a slot others need; their queries are
// resent.
func (p *pool[C]) cutDrains(now time.Time) {
	p.mu.Lock()
	full := int(p.total.Load()) >= p.size
	var overdue []C
	for _, c := range p.draining {
		if full && now.Sub(c.retiredSince()) >= drainGrace {
			overdue = append(overdue, c)
		}
	}
	p.mu.Unlock()
	for _, c := range overdue {
		c.evict("retired connection still draining after " + drainGrace.String())
	}
}

// waitError says why a query gave up, at ctx's end, waiting for a
// connection; dl is the dial its last wait was for, nil when it waited with
// no dial going on. Waiting for a dial means the upstream is slow to accept
// or to complete the handshake: a failure like any timeout, even when the
// dial finished just as the deadline came, before the query could use its
// connection (the handshake took the query's whole deadline; the
// connection now open says nothing of room). Waiting with no dial, for room
// on connections that are open, means they are busy, or spent on the
// upstream's limit of queries per connection (budget.go), while the pool
// is at its size: the query timed out for want of this side's capacity,
// never reached the upstream, and must count neither against its health
// nor in its partial failure's window (ErrBusy). A flood of names the
// upstream is slow to answer fills the connections; counting the queries
// behind it would take a healthy upstream out for everyone.
func (p *pool[C]) waitError(ctx context.Context, name string, dl *dialState[C]) error {
	p.mu.Lock()
	open := len(p.activeConns())+len(p.draining) > 0
	p.mu.Unlock()
	if dl == nil && open {
		return fmt.Errorf("waiting for room on the connections to %s: %w: %w", name, ErrBusy, ctx.Err())
	}
	return fmt.Errorf("waiting for a connection to %s: %w", name, ctx.Err())
}

// close marks the pool closed and returns every connection, for the caller
// to shut down; false if it was closed already.
func (p *pool[C]) close() ([]C, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, false
	}
	p.closed = true
	p.notifyLocked()
	return slices.Concat(p.activeConns(), p.draining), true
}
