package server

import (
	"sync/atomic"
	"time"
)

// A TCP connection waiting for its next query holds one of TCPMaxConns
// slots. A process holding them all idle would lock every other client out
// of TCP for TCPIdleTimeout, including those retrying over TCP after a
// truncated UDP answer. So, as Unbound does with tcp-idle-timeout, the idle
// timeout shrinks as connections fill the limit: with more than half of
// them open, 1% of TCPIdleTimeout; more than 65%, 0.2%; more than 80%, none;
// never below minIdle, nor above TCPIdleTimeout. A connection already
// waiting when the limit nears gets the shorter timeout too, counted from
// when it began to wait.

// minIdle is the shortest idle timeout: enough for a client that is
// sending its next query.
const minIdle = 200 * time.Millisecond

// idleLevels are the shares of TCPMaxConns past which the idle timeout
// shrinks, in per mille, and the per mille of TCPIdleTimeout it shrinks to.
var idleLevels = []struct{ above, keep int64 }{
	{500, 10},
	{650, 2},
	{800, 0},
}

type idlePolicy struct {
	base  time.Duration
	limit int64
	level atomic.Int32 // how many of idleLevels the open connections are past
}

// levelAt is how many of idleLevels open connections are past.
func (p *idlePolicy) levelAt(open int64) int32 {
	var l int32
	for _, lv := range idleLevels {
		if open*1000 > lv.above*p.limit {
			l++
		}
	}
	return l
}

// timeout is the idle timeout for a connection that begins to wait now.
func (p *idlePolicy) timeout() time.Duration {
	l := p.level.Load()
	if l == 0 {
		return p.base
	}
	d := p.base * time.Duration(idleLevels[l-1].keep) / 1000
	return min(p.base, max(d, minIdle))
}

// opened notes that open connections are open, one just accepted; when that
// passes a level, the connections already waiting get the shorter timeout.
func (p *idlePolicy) opened(s *Server, open int64) {
	l := p.levelAt(open)
	if p.level.Swap(l) >= l {
		return
	}
	d := p.timeout()
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.shortenIdle(d)
	}
}

// closed notes that open connections are left.
func (p *idlePolicy) closed(open int64) { p.level.Store(p.levelAt(open)) }
