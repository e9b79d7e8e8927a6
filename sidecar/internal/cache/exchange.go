package cache

import (
	"context"
	"errors"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// Exchange answers q, a query that Lookup missed: from an entry that
// became fresh meanwhile, from the upstream (through the flight of its
// key), or stale when the upstream fails or is slow and the entry may be
// served stale (stale.go). Queries the cache must not answer (cacheable)
// and names the router answers itself go straight to the router.
//
// An answer the upstream gave q's own query is returned as it came; one
// written from the cache is shaped for q.
func (c *Cache) Exchange(ctx context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	if !cacheable(&q) {
		return c.up.Exchange(ctx, q)
	}
	rt := c.up.Route(&q)
	if rt.Local {
		return c.up.Exchange(ctx, q)
	}
	key := string(q.AppendKey(nil))
	for {
		now := c.clock.NowNano()
		old, _ := c.store.get(key)
		switch {
		case old == nil:
		case old.fresh(now):
			c.m.hits[old.kind].Inc()
			return reply(old.write(nil, &q, now, false, c.opts.UDPSize))
		case old.servableStale(now):
			return c.staleOrFresh(ctx, key, &q, rt, old, now)
		}
		ans, err := c.resolve(ctx, key, &q, rt, old)
		if !errors.Is(err, errRetry) {
			return ans, err
		}
	}
}
