package cache

import "github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"

// Lookup appends to dst the answer to q from the cache, shaped for q's
// client (dnswire.Template.AppendTo: its ID and spelling, TTLs counted
// down, its EDNS or none), and reports whether there was one: a fresh
// entry, or an expired one while a failed refresh is being waited out
// (RFC 8767 §5: stale, TTL 30, EDE 3). Everything else is a miss, for
// Exchange. q is a query the server's protocol rules let through: one
// question, opcode QUERY, EDNS version 0.
//
// It is the server's hit path, called from its read loops for every such
// query, so it takes no lock, starts no goroutine (but for the rare
// prefetch) and allocates nothing when dst has room for the answer: it
// builds the key in that room first (up to dnswire.MaxKeyLen bytes), then
// writes the answer over it.
func (c *Cache) Lookup(dst []byte, q *dnswire.Msg) ([]byte, bool) {
	c.m.requests.Inc()
	if !cacheable(q) {
		return dst, false
	}
	key := q.AppendKey(dst[len(dst):])
	e, ok := c.store.get(lookupKey(key))
	if !ok {
		return dst, false
	}
	now := c.clock.NowNano()
	switch {
	case e.fresh(now):
		c.m.hits[e.kind].Inc()
		if c.opts.PrefetchHits > 0 {
			c.countHit(e, key, q, now)
		}
		return e.write(dst, q, now, false, c.opts.UDPSize), true
	case e.servableStale(now) && now < e.recheck.Load():
		c.m.stale.Inc()
		return e.write(dst, q, now, true, c.opts.UDPSize), true
	}
	return dst, false
}
