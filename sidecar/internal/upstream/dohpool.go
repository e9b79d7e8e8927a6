package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The DoH pool follows the DoT pool's rules (pool.go): at most PoolSize
// connections open or being dialed, retired ones included until they close;
// one dial at a time, shared by every query that waits; another connection
// only when the least-loaded one has growAt streams in flight. HTTP/2 keeps
// the streams of a connection apart, so what the DoT's conn does with IDs
// and frames, h2Conn does here (dohh2.go); what is left is which
// connection a query takes, and when a connection goes.

// dohConn is one HTTP/2 connection.
type dohConn struct {
	d     *DoH
	h2    *h2Conn
	certs tls.ConnectionState // as verified at handshake
	local net.Addr
	born  time.Time

	load    atomic.Int32  // streams this pool has reserved or running on it
	answers atomic.Uint64 // answers read on it: proof the upstream serves on it
	// maxStreams is MaxInFlightPerConn, or the server's stream limit from
	// its first SETTINGS when lower (a later SETTINGS may lower it again:
	// reserve).
	maxStreams int32
	closing    atomic.Bool  // retired or dead: the picker skips it
	ends       atomic.Int32 // its death and its socket's close seen so far (end)

	mu        sync.Mutex
	trust     *trustState // the trust it was last verified against
	retired   bool        // no new queries; closes once drained
	retiredAt time.Time
	dead      bool
	cause     error     // why it died, when the upstream ended it
	newLoss   error     // its queries' error, once it died before answering anything (lostErr)
	idleSince time.Time // when load last fell to 0
}

// reserve takes a stream slot on c for one query. It fails when c takes no
// new queries or is at its limit (ours or the server's); unusable says that
// c will never take one again (closed, or the server sent GOAWAY), as
// opposed to being full.
func (c *dohConn) reserve() (ok, unusable bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.retired || c.dead {
		return false, true
	}
	if !c.h2.usable.Load() {
		return false, true // closed, or the server sent GOAWAY
	}
	limit := c.maxStreams
	if p := c.h2.peerMaxStreams.Load(); p < uint32(limit) {
		limit = int32(p)
	}
	if n := c.load.Load(); n >= limit {
		// With none of our streams on it, a connection the server now
		// allows no streams on is of no use.
		return false, n == 0
	}
	c.load.Add(1)
	return true, false
}

// release gives back the slot reserve took, once the query's stream is over.
func (c *dohConn) release() {
	c.mu.Lock()
	n := c.load.Add(-1)
	if n == 0 {
		c.idleSince = time.Now()
	}
	closeNow := n == 0 && c.retired && !c.dead
	c.mu.Unlock()
	if c.d.waiting.Load() > 0 {
		c.d.notify()
	}
	if closeNow {
		c.shutdown()
	}
}

// retire stops new queries on c; it closes once its streams are over.
func (c *dohConn) retire(why string) {
	c.mu.Lock()
	if c.retired || c.dead {
		c.mu.Unlock()
		return
	}
	c.retired = true
	c.retiredAt = time.Now()
	c.closing.Store(true)
	drained := c.load.Load() == 0
	c.mu.Unlock()
	c.d.log.Debug("retiring upstream connection", "upstream", c.d.name, "reason", why, "local", c.local.String())
	c.d.retired(c, !drained)
	if drained {
		c.shutdown()
	}
}

// shutdown closes c once, interrupting its streams; its slot is free
// once its socket is closed too.
func (c *dohConn) shutdown() { c.shutdownFor(nil) }

func (c *dohConn) shutdownFor(cause error) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	c.dead = true
	c.cause = cause
	c.closing.Store(true)
	c.mu.Unlock()
	c.h2.close(errClosedHere)
	c.end()
}

// end notes one of c's two ends, its death (shutdownFor) and its socket's
// close (h2Conn.onSocketClosed), and frees its slot at the second, which
// may come first: the server may close the socket before the pool learns
// of it.
func (c *dohConn) end() {
	if c.ends.Add(1) == 2 {
		c.d.removeConn(c)
	}
}

// lose ends c after a failure of the connection itself, err: closed or
// reset by the upstream, or GOAWAY. With nothing more to come on it, it
// closes now; after a GOAWAY, the streams the server has read are still
// answered, so it drains.
func (c *dohConn) lose(err error) {
	if c.h2.Err() == nil {
		c.retire(err.Error())
		return
	}
	c.shutdownFor(c.lostErr(err))
}

func (c *dohConn) isDead() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.dead
}

// retiredSince is when c was retired (zero if it was not).
func (c *dohConn) retiredSince() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.retiredAt
}

// evict closes c now: its streams fail and their queries are resent.
func (c *dohConn) evict(why string) {
	c.d.log.Debug("closing upstream connection", "upstream", c.d.name, "reason", why)
	c.shutdown()
}

// deathCause is why the upstream ended c (nil while it lives, or when c
// was closed by this side).
func (c *dohConn) deathCause() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cause
}

// closeIfIdle closes c if no stream has been on it since idleFor before now.
func (c *dohConn) closeIfIdle(now time.Time, idleFor time.Duration) bool {
	c.mu.Lock()
	idle := !c.dead && c.load.Load() == 0 && now.Sub(c.idleSince) >= idleFor
	if idle {
		c.retired = true // reserve refuses from here on
		c.closing.Store(true)
	}
	c.mu.Unlock()
	if idle {
		c.shutdown()
	}
	return idle
}

func (c *dohConn) peer() *tls.ConnectionState { return &c.certs }

func (c *dohConn) setTrust(st *trustState) {
	c.mu.Lock()
	c.trust = st
	c.mu.Unlock()
}

func (c *dohConn) verifiedAgainst(st *trustState) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.trust == st
}

// acquire reserves a stream slot for one query on a connection, dialing one
// if none is open.
func (d *DoH) acquire(ctx context.Context) (*dohConn, error) {
	var dl *dialState[*dohConn] // the dial this query last waited for
	for {
		if c := d.pick(); c != nil {
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
		if dl != nil && dl.finished && len(d.activeConns()) == 0 {
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
		if d.dialing == nil && int(d.total.Load()) < d.opts.PoolSize {
			d.startDialLocked()
		}
		waitDial := d.dialing // what this wait is for: a dial, or (nil) room
		if waitDial != nil {
			dl = waitDial
		}
		// Counted as waiting before looking once more, so that a stream
		// ending after that look notifies (release), and wait is closed.
		d.waiting.Add(1)
		wait := d.changed
		d.mu.Unlock()
		if c := d.pick(); c != nil {
			d.waiting.Add(-1)
			return c, nil // room appeared meanwhile
		}

		// Wait for the dial, or for room on a connection or in the pool.
		select {
		case <-wait:
			d.waiting.Add(-1)
		case <-ctx.Done():
			d.waiting.Add(-1)
			return nil, d.waitError(ctx, d.name, waitDial)
		}
	}
}

// pick reserves a slot on the least-loaded usable connection with room,
// without taking the pool's lock. A connection found unusable is retired on
// the way; when every usable one is full, the pool grows if it has room.
func (d *DoH) pick() *dohConn {
	conns := d.activeConns()
	var tried uint64 // by index in conns: at most maxDoHPool of them
	full := false
	for {
		best, bi := (*dohConn)(nil), -1
		bestLoad := int32(d.opts.MaxInFlightPerConn)
		for i, c := range conns {
			if tried&(1<<i) != 0 || c.closing.Load() {
				continue
			}
			if l := c.load.Load(); l < bestLoad {
				best, bi, bestLoad = c, i, l
			}
		}
		if best == nil {
			break
		}
		tried |= 1 << bi
		ok, unusable := best.reserve()
		if ok {
			return best
		}
		if unusable {
			best.lose(errors.New("closed by the upstream, or GOAWAY, before this query"))
		} else {
			full = true
		}
	}
	if full && int(d.total.Load()) < d.opts.PoolSize {
		// Another connection takes the queries that would wait for room.
		d.grow()
	}
	return nil
}

func (d *DoH) launchDial(dl *dialState[*dohConn]) {
	d.wg.Add(1)
	go d.runDial(dl)
}

func (d *DoH) runDial(dl *dialState[*dohConn]) {
	defer d.wg.Done()
	c, err := d.dial()
	if err != nil {
		d.logDialError(err)
	}
	closed := d.finishDial(dl, c, err)
	switch {
	case err != nil:
	case closed:
		c.shutdown()
	case dl.err == nil:
		d.log.Debug("upstream connection open", "upstream", d.name, "local", c.local.String(),
			"resumed", c.certs.DidResume, "tls", tlsVersion(c.certs.Version), "max_streams", c.maxStreams)
	}
}

// dial opens a verified TLS connection, as a DoT upstream does, and starts
// HTTP/2 on it.
func (d *DoH) dial() (*dohConn, error) {
	tc, st, err := d.tlsUpstream.dial(d.ctx)
	if err != nil {
		return nil, err
	}
	h := newH2Conn(tc, d.name)
	h.start(&d.wg)
	if err := d.awaitSettings(h); err != nil {
		h.fail(fmt.Errorf("starting HTTP/2 with %s: %w", d.name, err), true)
		d.m.open.Dec()
		if d.ctx.Err() != nil {
			return nil, ErrClosed
		}
		return nil, &dialError{stage: stageHTTP2, err: fmt.Errorf("%w: starting HTTP/2 with %s: %w", ErrUnreachable, d.name, err)}
	}
	now := time.Now()
	c := &dohConn{
		d:          d,
		h2:         h,
		certs:      tc.ConnectionState(),
		local:      tc.LocalAddr(),
		born:       now,
		trust:      st,
		idleSince:  now,
		maxStreams: int32(d.opts.MaxInFlightPerConn),
	}
	if m := h.peerMaxStreams.Load(); m < uint32(c.maxStreams) {
		c.maxStreams = int32(m)
	}
	h.onSocketClosed(c.end)
	return c, nil
}

// awaitSettings waits, within the dial timeout, for the server's
// connection preface: its first SETTINGS, which carry its stream limit.
// Until then the limit is unknown (HTTP/2 clients assume 100), and a burst
// of queries on a new connection past it would be refused; some servers
// take many refused streams for an attack and drop the connection. A server
// sends its preface at once, so this costs nothing but against an upstream
// that is not speaking HTTP/2.
func (d *DoH) awaitSettings(h *h2Conn) error {
	t := time.NewTimer(d.opts.DialTimeout)
	defer t.Stop()
	select {
	case <-h.settings:
		return h.prefaceErr // written before settings was closed
	case <-t.C:
		return errors.New("no SETTINGS from the server within the dial timeout")
	case <-d.ctx.Done():
		return ErrClosed
	}
}

// errClosedHere fails the streams of a connection this side closed: the
// pool's housekeeping, an eviction, or Close.
var errClosedHere = errors.New("connection closed by this side")

// housekeep, every tick, closes idle connections, retires old ones,
// re-checks connections after a Trust update, forgets connections the server
// closed and cuts drains that take too long.
func (d *DoH) housekeep(now time.Time) {
	st := d.trust.load()
	for _, c := range d.activeConns() {
		if c.h2.Err() != nil {
			// Closed by the server while idle (its idle timeout): nothing
			// to resend, the slot is free again.
			d.log.Debug("upstream closed the connection", "upstream", d.name, "local", c.local.String())
			c.shutdown()
			continue
		}
		if !c.verifiedAgainst(st) && !reverifyConn(&d.tlsUpstream, c, st) {
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

	d.cutDrains(now)
	d.mu.Lock()
	var gone []*dohConn
	for _, c := range d.draining {
		if c.h2.Err() != nil {
			gone = append(gone, c) // closed by the server while draining
		}
	}
	d.mu.Unlock()
	for _, c := range gone {
		c.shutdown()
	}
}

// lostErr is the error of a query whose connection failed under it (closed,
// reset, GOAWAY before the query was processed), by the DoT's rule: a
// connection that had answered and then ended is a pooled one ending
// normally (ErrConnClosed: the query is resent, the upstream not blamed);
// one that never answered is a new one lost (newconn.go), counted once in
// the upstream's run, whose value every query it carried gets.
func (c *dohConn) lostErr(err error) error {
	if c.answers.Load() != 0 {
		return fmt.Errorf("%w: %s: %w", ErrConnClosed, c.d.name, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.newLoss == nil {
		c.newLoss = c.d.lostNew(fmt.Errorf("new connection to %s: %w", c.d.name, err))
	}
	return c.newLoss
}
