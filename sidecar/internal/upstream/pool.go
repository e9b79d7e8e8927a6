package upstream

import (
	"context"
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

// acquire registers req on a connection with room, dialing one if none is
// open. It returns when req is queued for sending.
func (d *DoT) acquire(ctx context.Context, req *request) (*conn, error) {
	var dl *dialState[*conn] // the dial this query last waited for
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
			return nil, d.waitError(ctx, d.name, dl)
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

func (d *DoT) launchDial(dl *dialState[*conn]) {
	d.wg.Add(1)
	go d.runDial(dl)
}

func (d *DoT) runDial(dl *dialState[*conn]) {
	defer d.wg.Done()
	c, err := d.dial()
	if err != nil {
		d.logDialError(err)
	} else {
		c.start()
	}
	closed := d.finishDial(dl, c, err)
	switch {
	case err != nil:
	case closed:
		c.shutdown(ErrClosed, true)
	case dl.err == nil:
		d.log.Debug("upstream connection open", "upstream", d.name, "local", c.localAddr().String(),
			"resumed", c.certs.DidResume, "tls", tlsVersion(c.certs.Version))
	}
}

// housekeep, every tick, closes idle connections, retires old ones,
// re-checks connections after a Trust update and cuts drains that take too
// long.
func (d *DoT) housekeep(now time.Time) {
	st := d.opts.Trust.load()
	for _, c := range d.activeConns() {
		if !c.verifiedAgainst(st) && !reverifyConn(&d.tlsUpstream, c, st) {
			continue
		}
		if now.Sub(c.born) >= d.opts.MaxAge {
			c.retire("max age")
			continue
		}
		if c.closeIfIdle(now, d.tick) {
			d.log.Debug("closed idle upstream connection", "upstream", d.name)
		}
	}

	d.cutDrains(now)
}
