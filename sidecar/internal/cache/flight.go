package cache

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
)

// A flight is the one upstream query in the air for a key. Queries of the
// same key that miss meanwhile wait for it, each within its own deadline,
// instead of sending their own: a thousand pods' resolvers asking for a
// name whose entry just expired make one upstream query.
type flight struct {
	done chan struct{}
	// waiters, guarded by Cache.mu until the flight lands, counts those
	// that will write their answer from it.
	waiters int

	// Set before done is closed.
	e      *entry            // the entry kept from the answer
	tpl    *dnswire.Template // the answer, when it was not kept but has waiters
	err    error             // no answer
	failed bool              // no answer, or SERVFAIL: a stale answer is better
}

// join returns the flight in the air for key, or a new one that the caller
// must lead (leader true). Every follower counts as a waiter, and so does a
// leader with leaderWaits (one that sends the query in the background and
// waits like the others), so that the flight leaves an answer for them.
//
// A query whose route is plaintext (rt not Encrypted) gets a flight of its
// own, which no other query joins. Its upstream is reached on port 53,
// which the interception redirects to the sidecar, and conntrack keeps an
// application's redirected UDP flow for a while after its socket closed:
// when the sidecar's query to the cluster's resolver leaves from such a
// source port, conntrack sends it back to the sidecar as a client's query.
// Had it joined the flight it belongs to, it would wait for itself until
// the deadline (a lookup stalled for QUERY_TIMEOUT, then SERVFAIL); with
// its own, it is relayed once more from another port, and its answer comes
// back to the first query as the upstream's.
func (c *Cache) join(key string, rt *router.Route, leaderWaits bool) (f *flight, leader bool) {
	if !rt.Encrypted {
		f = &flight{done: make(chan struct{})}
		if leaderWaits {
			f.waiters = 1
		}
		return f, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	f = c.flights[key]
	if leader = f == nil; leader {
		f = &flight{done: make(chan struct{})}
		c.flights[key] = f
	}
	if !leader || leaderWaits {
		f.waiters++
	}
	return f, leader
}

// lead sends q for the flight of key, keeps the answer if it may, lands
// the flight, and returns the answer as the upstream gave it.
func (c *Cache) lead(ctx context.Context, f *flight, key string, q *dnswire.Msg, rt *router.Route, old *entry) (dnswire.Msg, error) {
	ans, e, err := c.fetch(ctx, key, q, rt, old)
	c.land(f, key, &ans, e, err)
	return ans, err
}

// land ends the flight of key: no one joins it any more, and its waiters
// wake to what it got.
func (c *Cache) land(f *flight, key string, ans *dnswire.Msg, e *entry, err error) {
	c.mu.Lock()
	if c.flights[key] == f {
		delete(c.flights, key)
	}
	waiters := f.waiters
	c.mu.Unlock()
	f.e, f.err = e, err
	f.failed = err != nil || ans.Rcode() == dnswire.RcodeServerFailure
	if waiters > 0 && err == nil && e == nil {
		// An answer that is not kept (REFUSED, truncated, TTL 0...) is
		// still the answer to everyone's question.
		if t, terr := dnswire.NewTemplate(ans, math.MaxUint32); terr == nil {
			f.tpl = &t
		}
	}
	close(f.done)
}

// errRetry tells a follower to ask again itself: the flight it waited for
// ended with its leader's deadline, or with an answer it cannot share.
var errRetry = errors.New("cache: ask again")

// follow writes q's answer from the landed flight f.
func (c *Cache) follow(ctx context.Context, f *flight, q *dnswire.Msg) (dnswire.Msg, error) {
	switch {
	case f.err != nil:
		if ctx.Err() == nil && (errors.Is(f.err, context.DeadlineExceeded) || errors.Is(f.err, context.Canceled)) {
			return dnswire.Msg{}, errRetry
		}
		return dnswire.Msg{}, f.err
	case f.e != nil:
		return reply(f.e.write(nil, q, c.clock.NowNano(), false, c.opts.UDPSize))
	case f.tpl != nil:
		return reply(f.tpl.AppendTo(nil, q, dnswire.WriteOptions{UDPSize: c.opts.UDPSize}))
	}
	return dnswire.Msg{}, errRetry
}

// resolve gets the answer to q from the upstream, through the flight of
// key: it leads one, or follows the one in the air.
func (c *Cache) resolve(ctx context.Context, key string, q *dnswire.Msg, rt *router.Route, old *entry) (dnswire.Msg, error) {
	f, leader := c.join(key, rt, false)
	if leader {
		return c.lead(ctx, f, key, q, rt, old)
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		c.leave(f)
		return dnswire.Msg{}, fmt.Errorf("waiting for the upstream's answer to the same question: %w", ctx.Err())
	}
	return c.follow(ctx, f, q)
}

// leave takes a waiter that gave up out of f's count.
func (c *Cache) leave(f *flight) {
	c.mu.Lock()
	f.waiters--
	c.mu.Unlock()
}

// fetch asks the upstream for q and keeps the answer in the entry of key
// if it may. old is the entry of key found expired (or about to expire, for
// a prefetch), if any: a failure or an upstream's SERVFAIL leaves it in
// place, to be served stale (a kept SERVFAIL never hides an answer that
// can still be given), and starts its failure recheck.
func (c *Cache) fetch(ctx context.Context, key string, q *dnswire.Msg, rt *router.Route, old *entry) (dnswire.Msg, *entry, error) {
	ans, err := c.up.Exchange(ctx, *q)
	now := c.clock.NowNano()
	usable := old != nil && !old.servfail && now < old.staleUntil
	if err != nil || ans.Rcode() == dnswire.RcodeServerFailure && usable {
		if usable && old.staleUntil > old.expires {
			old.recheck.Store(now + int64(c.opts.StaleRecheck))
		}
		return ans, nil, err
	}
	e := c.newEntry(q, &ans, rt, now)
	if e != nil {
		if old != nil {
			// A hot name stays hot across refreshes.
			e.hits.Store(old.hits.Load())
			e.lastHit.Store(old.lastHit.Load())
		}
		c.store.set(key, e)
	}
	return ans, e, nil
}

// reply parses an answer the cache wrote, for Exchange's caller.
func reply(b []byte) (dnswire.Msg, error) {
	m, err := dnswire.Parse(b)
	if err != nil {
		return dnswire.Msg{}, fmt.Errorf("cache: writing an answer: %w", err)
	}
	return m, nil
}
