package upstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

// The pool keeps at most PoolSize connections open or being dialed, counting
// retired connections that are still draining. It starts with one connection
// and adds another only when the least-loaded one is busy; queries that find
// no connection share the one dial in progress.

const (
	// growAt is the in-flight count on the least-loaded connection at which
	// another connection is dialed (pool permitting). One connection
	// pipelines thousands of queries; more connections mainly spread TLS
	// work over cores and limit head-of-line blocking behind a slow answer.
	growAt = 32
	// growBackoff: after a failed dial, no dial is started merely to spread
	// load for this long (queries with no connection at all still dial).
	growBackoff = time.Second
	// drainGrace: a retired connection still draining after this long, while
	// the pool is full, is closed and its queries are resent, so a retired
	// connection with a lost query does not hold a slot others need.
	drainGrace = time.Second
)

type dialState struct {
	finished bool // guarded by DoT.mu, like the fields below
	err      error
	conn     *conn // what a successful dial produced
}

// failure is why a finished dial left its waiters nothing to use, or nil: the
// dial's error, or the death of its connection if the upstream dropped it
// before answering anything. A connection that served and then closed is a
// pooled one ending normally; its waiters may dial again. Called with
// DoT.mu held.
func (dl *dialState) failure() error {
	if dl.err != nil {
		return dl.err
	}
	if dl.conn != nil {
		if cause := dl.conn.deathCause(); errors.Is(cause, ErrUnreachable) {
			return cause
		}
	}
	return nil
}

// acquire registers req on a connection with room, dialing one if none is
// open. It returns when req is queued for sending.
func (d *DoT) acquire(ctx context.Context, req *request) (*conn, error) {
	var dl *dialState // the dial this query last waited for
	for {
		if c := d.pick(); c != nil && c.send(req) {
			if c.load.Load() >= growAt && int(d.total.Load()) < d.opts.PoolSize {
				d.grow()
			}
			return c, nil
		}

		d.mu.Lock()
		if d.closed {
			d.mu.Unlock()
			return nil, ErrClosed
		}
		c := d.pick()
		if c == nil && dl != nil && dl.finished {
			// The dial this query waited for is over and left it nothing:
			// it failed, or the upstream dropped the new connection before
			// answering anything. Failing with that beats dialing again at
			// once, which against an upstream that hangs up on every
			// handshake would loop until the deadline.
			if err := dl.failure(); err != nil {
				d.mu.Unlock()
				return nil, err
			}
		}
		if c == nil {
			dl = d.dialing
			if dl == nil && int(d.total.Load()) < d.opts.PoolSize {
				dl = d.startDialLocked()
			}
		}
		wait := d.changed
		d.mu.Unlock()
		if c != nil {
			continue // a connection appeared (or had room again) meanwhile
		}

		// Wait for the dial, or for a connection to have room or a slot to
		// free up.
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for a connection to %s: %w", d.name, ctx.Err())
		}
	}
}

// pick returns the least-loaded usable connection, without locking.
func (d *DoT) pick() *conn {
	p := d.active.Load()
	if p == nil {
		return nil
	}
	var best *conn
	bestLoad := int32(d.opts.MaxInFlightPerConn)
	for _, c := range *p {
		if c.closing.Load() {
			continue
		}
		if l := c.load.Load(); l < bestLoad {
			best, bestLoad = c, l
		}
	}
	return best
}

func (d *DoT) activeConns() []*conn {
	if p := d.active.Load(); p != nil {
		return *p
	}
	return nil
}

// grow dials one more connection to spread load, if the pool has room.
func (d *DoT) grow() {
	if time.Now().UnixNano() < d.noGrowUntil.Load() {
		return
	}
	d.mu.Lock()
	if !d.closed && d.dialing == nil && int(d.total.Load()) < d.opts.PoolSize {
		d.startDialLocked()
	}
	d.mu.Unlock()
}

func (d *DoT) startDialLocked() *dialState {
	dl := &dialState{}
	d.dialing = dl
	d.total.Add(1)
	d.wg.Add(1)
	go d.runDial(dl)
	return dl
}

func (d *DoT) runDial(dl *dialState) {
	defer d.wg.Done()
	c, err := d.dial()
	if err != nil {
		d.logDialError(err)
	} else {
		c.start()
	}
	d.mu.Lock()
	d.dialing = nil
	dl.finished, dl.conn = true, c
	closed := d.closed
	switch {
	case err != nil:
		dl.err = err
		d.total.Add(-1)
		d.noGrowUntil.Store(time.Now().Add(growBackoff).UnixNano())
	case closed:
		dl.err = ErrClosed // c still holds its slot; shutdown below frees it
	case c.isDead():
		// The upstream completed the handshake and hung up at once (at its
		// connection limit, or broken); removeConn has freed the slot. The
		// queries waiting for this dial get that as its error (the conn's
		// own, ErrUnreachable, one value for all of them), rather than each
		// dialing again at once: a hang-up per handshake would otherwise be
		// a dial loop until their deadlines.
		dl.err = c.deathCause()
		d.noGrowUntil.Store(time.Now().Add(growBackoff).UnixNano())
	default:
		d.publishLocked(append(slices.Clone(d.activeConns()), c))
		d.log.Debug("upstream connection open", "upstream", d.name, "local", c.localAddr().String(),
			"resumed", c.certs.DidResume, "tls", tlsVersion(c.certs.Version))
	}
	d.notifyLocked()
	d.mu.Unlock()
	if err == nil && closed {
		c.shutdown(ErrClosed, true)
	}
}

func (d *DoT) publishLocked(conns []*conn) { d.active.Store(&conns) }

// notifyLocked wakes every query waiting for the pool to change.
func (d *DoT) notifyLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

func (d *DoT) notify() {
	d.mu.Lock()
	d.notifyLocked()
	d.mu.Unlock()
}

// retired moves c from the usable connections to the draining ones. If c was
// busy and nothing else is usable, a replacement is dialed at once (pool
// permitting) rather than by the next query. If the pool has no room for
// one (PoolSize 1, or every connection retired at once: they reach MaxAge
// in the same tick when the second was dialed moments after the first, and
// a trust change retires them all), every new query would wait for a drain,
// which a single slow name stretches to drainGrace and beyond; so the
// connection retired first is closed now instead, its queries resent on the
// replacement.
func (d *DoT) retired(c *conn, busy bool) {
	d.mu.Lock()
	active := d.activeConns()
	if i := slices.Index(active, c); i >= 0 {
		d.publishLocked(slices.Delete(slices.Clone(active), i, i+1))
	}
	if c.isDead() {
		d.mu.Unlock()
		return // already closed and removed
	}
	d.draining = append(d.draining, c)
	var evict *conn
	if busy && !d.closed && len(d.activeConns()) == 0 && d.dialing == nil {
		if int(d.total.Load()) < d.opts.PoolSize {
			d.startDialLocked()
		} else {
			evict = d.draining[0]
		}
	}
	d.notifyLocked()
	d.mu.Unlock()
	if evict != nil {
		evict.lost(fmt.Errorf("retired connection to %s closed to make room for a replacement", d.name))
	}
}

// removeConn forgets c, which has died, and frees its slot.
func (d *DoT) removeConn(c *conn) {
	d.mu.Lock()
	active := d.activeConns()
	if i := slices.Index(active, c); i >= 0 {
		d.publishLocked(slices.Delete(slices.Clone(active), i, i+1))
	}
	if i := slices.Index(d.draining, c); i >= 0 {
		d.draining = slices.Delete(d.draining, i, i+1)
	}
	d.total.Add(-1)
	d.notifyLocked()
	d.mu.Unlock()
	d.m.open.Dec()
}

// housekeeping closes idle connections, retires old ones, re-checks
// connections after a Trust update and cuts drains that take too long.
func (d *DoT) housekeeping() {
	defer d.wg.Done()
	t := time.NewTicker(d.tick)
	defer t.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case now := <-t.C:
			d.housekeep(now)
		}
	}
}

func (d *DoT) housekeep(now time.Time) {
	st := d.opts.Trust.load()
	for _, c := range d.activeConns() {
		if !c.verifiedAgainst(st) && !d.reverifyConn(c, st) {
			continue
		}
		if now.Sub(c.born) >= d.opts.MaxAge {
			c.retire("max age")
			continue
		}
		if c.closeIfIdle(now, d.opts.IdleTimeout) {
			d.log.Debug("closed idle upstream connection", "upstream", d.name)
		}
	}

	d.mu.Lock()
	full := int(d.total.Load()) >= d.opts.PoolSize
	var overdue []*conn
	for _, c := range d.draining {
		c.mu.Lock()
		late := now.Sub(c.retiredAt) >= drainGrace
		c.mu.Unlock()
		if late && full {
			overdue = append(overdue, c)
		}
	}
	d.mu.Unlock()
	for _, c := range overdue {
		c.lost(fmt.Errorf("retired connection to %s still draining after %s", d.name, drainGrace))
	}
}
