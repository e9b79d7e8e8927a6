package cache

import (
	"bytes"
	"context"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// Serve-stale, RFC 8767, the "verify" way: an expired entry that may be
// served stale is given only when the upstream could not refresh it.
//
//   - While a failed refresh is being waited out (the failure recheck,
//     StaleRecheck), the stale answer comes at once, from Lookup or from
//     staleOrFresh, without asking the upstream.
//   - Otherwise the refresh is sent in the background, and the client
//     waits for it up to StaleClientTimeout (RFC 8767's client response
//     timer, below the query's deadline): a good answer in time is the
//     client's, and is kept; a failure, an upstream's SERVFAIL or the
//     timer give it the stale answer. A refresh that answers after the
//     timer still updates the entry.
//
// A stale answer has TTL 30 on every record and, for a client with EDNS,
// Extended DNS Error 3 (Stale Answer, RFC 8914).

// staleOrFresh answers q, whose entry old has expired but may be served
// stale.
func (c *Cache) staleOrFresh(ctx context.Context, key string, q *dnswire.Msg, rt *router.Route, old *entry, now int64) (dnswire.Msg, error) {
	if now < old.recheck.Load() {
		return c.stale(old, q)
	}
	f, leader := c.join(key, rt, true)
	if leader {
		// The refresh outlives this call, which owns q's bytes only
		// until it returns.
		bq, err := dnswire.Parse(bytes.Clone(q.Wire()))
		if err != nil {
			c.land(f, key, &bq, nil, err)
		} else if !c.goBackground(func(ctx context.Context) { _, _ = c.lead(ctx, f, key, &bq, rt, old) }) {
			c.land(f, key, &bq, nil, upstream.ErrClosed)
		}
	}
	timer := time.NewTimer(c.opts.StaleClientTimeout)
	defer timer.Stop()
	select {
	case <-f.done:
		if !f.failed {
			if ans, err := c.follow(ctx, f, q); err == nil {
				return ans, nil
			}
		}
	case <-timer.C:
		c.leave(f)
	case <-ctx.Done():
		c.leave(f)
	}
	return c.stale(old, q)
}

// stale writes old's answer for q as a stale one.
func (c *Cache) stale(old *entry, q *dnswire.Msg) (dnswire.Msg, error) {
	c.m.stale.Inc()
	return reply(old.write(nil, q, c.clock.NowNano(), true, c.opts.UDPSize))
}
