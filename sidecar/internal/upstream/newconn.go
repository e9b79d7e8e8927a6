package upstream

import (
	"errors"
	"fmt"
)

// A new connection that dies before answering anything. Its queries were
// pipelined on it, and the upstream ended it before a first answer reached
// us: a server at its connection limit, or broken, but as often a server
// that closes connections after some number of queries (or when idle, or
// at a restart) with more queries unread, so that its close became a reset
// that discarded the answers it had written. dnsdist and CoreDNS, which send
// one query per connection at a time, lose nothing to such a server; a
// pipelining client must not either. So the queries caught are sent once
// more on another connection, and only a run of new connections lost in a
// row says the upstream is failing.

// newLossesUnreachable is how many new connections of an upstream must die
// in a row before answering anything for their queries to fail as
// ErrUnreachable, a failure the Group holds against the upstream (once per
// connection: its queries share the error value). Shorter runs are
// errNewConnLost.
const newLossesUnreachable = 3

// errNewConnLost: a new connection died before any answer, one of fewer
// than newLossesUnreachable in a row. It is an ErrConnClosed, so a Group
// neither counts it nor stops retrying, and resending sends the query once
// more on another connection; a query caught on a second such connection
// fails with it (the Group then tries the next upstream).
var errNewConnLost = fmt.Errorf("%w before answering anything", ErrConnClosed)

// lostNew returns the error of the queries of a new connection that died,
// with err, before answering anything, and counts it in the upstream's run.
// The caller calls it once per connection and hands every query the value
// it returns.
func (t *tlsUpstream) lostNew(err error) error {
	if n := t.newLost.Add(1); n >= newLossesUnreachable {
		return fmt.Errorf("%w: %d new connections in a row lost before any answer, the last: %w", ErrUnreachable, n, err)
	}
	return fmt.Errorf("%w: %w", errNewConnLost, err)
}

// servedNew records the first answer on a connection: the run of new
// connections lost is over.
func (t *tlsUpstream) servedNew() {
	if t.newLost.Load() != 0 {
		t.newLost.Store(0)
	}
}

// secondNewLoss reports whether err, a send's failure, is the loss of a new
// connection for a query that already lost one (*lostOne, which it sets on
// the first): such a query is not resent again.
func secondNewLoss(err error, lostOne *bool) bool {
	if !errors.Is(err, errNewConnLost) {
		return false
	}
	if *lostOne {
		return true
	}
	*lostOne = true
	return false
}
