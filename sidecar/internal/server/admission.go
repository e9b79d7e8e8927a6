package server

import (
	"context"
	"sync/atomic"
	"time"
)

// deadlineGrain is how finely query deadlines are set: queries that arrive
// within the same grain share one context, whose deadline is QueryTimeout
// after the grain's end. A query thus gets between QueryTimeout and
// QueryTimeout+deadlineGrain.
const deadlineGrain = time.Millisecond

// deadlines hands out query contexts. A context per query cost a timer, an
// entry in the parent's children (under its lock) and their removal, about
// a twentieth of the CPU of a relayed query; a shared one costs an atomic
// load. At most QueryTimeout/deadlineGrain contexts are alive at once, and
// each is released by its own timer at its deadline, or by Shutdown
// cancelling base.
type deadlines struct {
	base    context.Context
	timeout time.Duration
	cur     atomic.Pointer[deadlineBucket]
}

type deadlineBucket struct {
	ctx    context.Context
	cancel context.CancelFunc // called by the context's own timer; kept for vet
	until  int64              // Unix nanoseconds: serves queries arriving before this
}

// get returns the context for a query arriving now.
func (d *deadlines) get() context.Context {
	now := time.Now().UnixNano()
	if b := d.cur.Load(); b != nil && now < b.until {
		return b.ctx
	}
	until := now - now%int64(deadlineGrain) + int64(deadlineGrain)
	b := &deadlineBucket{until: until}
	b.ctx, b.cancel = context.WithDeadline(d.base, time.Unix(0, until).Add(d.timeout))
	// Concurrent callers may each make one; the last stored serves the
	// rest, and every one ends at its deadline all the same.
	d.cur.Store(b)
	return b.ctx
}
