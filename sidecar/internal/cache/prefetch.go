package cache

import (
	"bytes"
	"context"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// Prefetch, as CoreDNS's: an entry asked for at least PrefetchHits times
// with no gap of PrefetchWindow between two asks is hot; when a hot entry
// is asked for with PrefetchPercent of its lifetime left (or 1 s, if
// later), the hit is answered from it as usual and a refresh is sent in
// the background. The refreshed entry inherits the count, so a name that
// stays hot never misses. One refresh per entry: a failed one is not
// repeated, and the entry then expires as any other.

// countHit counts a hit of e, the entry of key (a view of the caller's
// buffer), asked for by q, now, and starts e's refresh once it is due.
func (c *Cache) countHit(e *entry, key []byte, q *dnswire.Msg, now int64) {
	n := int32(1)
	switch last := e.lastHit.Swap(now); {
	case now-last > int64(c.opts.PrefetchWindow):
		e.hits.Store(1)
	case int(e.hits.Load()) >= c.opts.PrefetchHits:
		n = e.hits.Load() // hot already: no need to count on
	default:
		n = e.hits.Add(1)
	}
	if int(n) < c.opts.PrefetchHits || now < e.prefetchAt || e.servfail || !e.refreshing.CompareAndSwap(false, true) {
		return
	}
	c.prefetch(string(key), q, e)
}

// prefetch refreshes e, the entry of key, in the background, with a copy
// of q: the read loop reuses q's buffer.
func (c *Cache) prefetch(key string, q *dnswire.Msg, e *entry) {
	bq, err := dnswire.Parse(bytes.Clone(q.Wire()))
	if err != nil {
		return
	}
	rt := c.up.Route(&bq)
	f, leader := c.join(key, rt, false)
	if !leader {
		return // a miss's query is in the air already
	}
	started := c.goBackground(func(ctx context.Context) {
		c.m.prefetch.Inc()
		_, _ = c.lead(ctx, f, key, &bq, rt, e)
	})
	if !started {
		c.land(f, key, &bq, nil, context.Canceled)
	}
}
