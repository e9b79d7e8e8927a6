package upstream

import (
	"sync/atomic"
	"time"
)

// Some upstreams close a DoT connection after a fixed number of queries
// (dnsdist's setMaxTCPQueriesPerConnection, front ends that recycle
// connections). A client that pipelines more than that on a connection
// loses every query past the limit to the close, and resends them onto the
// next connection, where those past the limit are lost again: under load a
// query can be caught again and again until its deadline. dnsdist and
// CoreDNS, one query per connection at a time, never are. So a DoT learns
// the limit: when two connections in a row are closed by the upstream with
// queries still in flight, each after the same number of answers, that
// number is the upstream's limit, and each new connection carries at most
// that many queries, then takes no more and closes once they are answered.
// The limit is forgotten after MaxAge, and learned again if it still holds.

// connBudget is what a DoT knows of its upstream's per-connection limit.
type connBudget struct {
	lastClose atomic.Uint64 // answers on the last connection closed with queries in flight
	limit     atomic.Uint64 // queries per connection; 0: none known
	learnedAt atomic.Int64  // unix nanos
}

// closedUnderLoad records a connection the upstream closed after answering
// answers queries, with more in flight. It reports the limit when this
// close confirms one not known before.
func (b *connBudget) closedUnderLoad(answers uint64) (learned bool) {
	if b.lastClose.Swap(answers) != answers || b.limit.Load() == answers {
		return false
	}
	b.limit.Store(answers)
	b.learnedAt.Store(time.Now().UnixNano())
	return true
}

// queries returns how many queries a new send may bring a connection to, 0
// for no limit. A limit older than maxAge is forgotten.
func (b *connBudget) queries(maxAge time.Duration) uint64 {
	n := b.limit.Load()
	if n != 0 && time.Since(time.Unix(0, b.learnedAt.Load())) > maxAge {
		b.limit.CompareAndSwap(n, 0)
		b.lastClose.Store(0)
		return 0
	}
	return n
}
