package upstream

import (
	"encoding/binary"
	"time"
)

// edns-tcp-keepalive (RFC 7828) on DoT connections. Every query offers the
// option (dotRewrite), and the upstream answers with how long it keeps an
// idle connection open. A connection idle for nearly that long is not given
// another query: the upstream would close it as the query arrives, and the
// query would be resent after a wasted round trip, or, if the close came
// first on a connection that had not answered, be lost with it. Instead the
// connection is closed by this side a little before the upstream would,
// at the next query or housekeeping tick.

// keepaliveUnit is the unit of the option's TIMEOUT field.
const keepaliveUnit = 100 * time.Millisecond

// keepaliveMargin is how long before the upstream's announced idle timeout
// a connection stops taking queries: enough for a query to reach the
// upstream (a round trip, since the upstream's idle time started when it
// sent the last answer, half a round trip before it arrived here), with room
// for scheduling. A quarter of the timeout when that is shorter, so that a
// short timeout still leaves the connection most of its life.
func keepaliveMargin(timeout time.Duration) time.Duration { return min(timeout/4, time.Second) }

// noteKeepalive records the idle timeout the upstream announced in an
// answer's edns-tcp-keepalive option (data: its 2-byte TIMEOUT, in 100 ms
// units). Data of another length (a server echoing the empty offer) says
// nothing. A timeout of 0 asks the client to close the connection once done
// (RFC 7828 §3.3.2): c is retired, so it closes when its queries are
// answered.
func (c *conn) noteKeepalive(data []byte) {
	if len(data) != 2 {
		return
	}
	timeout := time.Duration(binary.BigEndian.Uint16(data)) * keepaliveUnit
	if timeout == 0 {
		c.retire("upstream asked to close (edns-tcp-keepalive timeout 0)")
		return
	}
	idle := timeout - keepaliveMargin(timeout)
	if c.keepIdle.Swap(int64(idle)) != int64(idle) {
		c.d.m.keepalive.Set(timeout.Seconds())
	}
}

// idleLimit is how long c may stay idle: the pool's idle timeout, or less
// when the upstream announced a shorter keepalive. Housekeeping, which sees
// c once a tick, closes it when it would pass a keepalive limit before the
// next tick: early rather than late, which could be after the upstream's
// own close.
func (c *conn) idleLimit(tick time.Duration) time.Duration {
	limit := c.d.opts.IdleTimeout
	if ka := time.Duration(c.keepIdle.Load()); ka > 0 && ka-tick < limit {
		limit = max(ka-tick, 0)
	}
	return limit
}

// idleExpiredLocked reports whether c, with nothing in flight, has been idle
// for longer than the upstream keeps connections, so that a query sent now
// could meet the upstream's close. Called with c.mu held.
func (c *conn) idleExpiredLocked() bool {
	ka := c.keepIdle.Load()
	return ka > 0 && len(c.inflight) == 0 && time.Since(c.idleSince) >= time.Duration(ka)
}
