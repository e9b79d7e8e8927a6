package server

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Admission: how many queries may be in flight at once (MaxInFlight), and
// each query's deadline.
//
// The limit bounds memory: with an upstream that never answers some names,
// every query for them would otherwise be held for the whole QueryTimeout,
// and a flood of them could grow the sidecar past its memory limit. At the
// limit a new query is answered SERVFAIL at once, unless a query admitted at
// least jostleAfter ago is still in flight: then the oldest such ones are
// given up on (SERVFAIL) to make room. Names that resolve are answered in
// milliseconds and never grow that old, so a flood of names that never
// resolve fills the limit with queries that can go, and does not starve the
// rest; this is Unbound's jostle-timeout, whose default this takes.
const jostleAfter = 200 * time.Millisecond

// deadlineGrain is how finely query deadlines are set: queries that arrive
// within the same grain share one bucket, whose context's deadline is
// QueryTimeout after the grain's end. A query thus gets between
// QueryTimeout and QueryTimeout+deadlineGrain. Buckets are also what
// jostling gives up on: all the queries of one grain at once.
const deadlineGrain = time.Millisecond

// admission hands out query contexts and counts the queries in flight. A
// context per query cost a timer, an entry in the parent's children (under
// its lock) and their removal, about a twentieth of the CPU of a relayed
// query; a shared one costs an atomic load, and admitting a query two atomic
// additions. At most QueryTimeout/deadlineGrain buckets are alive at once;
// each context is released by its own timer at its deadline, by jostling,
// or by Shutdown cancelling base.
type admission struct {
	base        context.Context
	timeout     time.Duration
	limit       int64
	jostleAfter time.Duration

	inflight atomic.Int64 // admitted and not yet released, jostled ones not counted
	jostled  atomic.Int64 // queries given up on to make room, for the metrics
	cur      atomic.Pointer[bucket]

	mu      sync.Mutex
	buckets []*bucket // in the order made; the oldest first
}

// bucket is the queries admitted within one deadlineGrain.
type bucket struct {
	ctx    context.Context
	cancel context.CancelFunc
	start  int64 // Unix nanoseconds: serves queries arriving from start
	until  int64 // ... to before until

	// state is the count of the bucket's queries in flight, with
	// jostledBit set once they are given up on: one word, so that a query
	// releasing its slot and the bucket being jostled agree on who takes
	// it off admission.inflight.
	state atomic.Int64
}

const jostledBit = 1 << 62

func newAdmission(base context.Context, timeout time.Duration, limit int) *admission {
	return &admission{base: base, timeout: timeout, limit: int64(limit), jostleAfter: jostleAfter}
}

// admit counts a query arriving now as in flight and returns its bucket,
// whose context bounds it; the query calls release when it has its answer.
// It returns nil when the limit is reached and no query can be jostled.
func (a *admission) admit() *bucket {
	b := a.current()
	if b.state.Add(1)&jostledBit != 0 {
		// Jostled already (it can only be a bucket older than
		// jostleAfter, which current never hands out); not counted.
		return nil
	}
	if a.inflight.Add(1) <= a.limit || a.jostle() {
		return b
	}
	a.inflight.Add(-1)
	b.state.Add(-1)
	return nil
}

// release takes b's query off the count in flight.
func (a *admission) release(b *bucket) {
	if b.state.Add(-1)&jostledBit == 0 {
		a.inflight.Add(-1)
	}
}

// jostled reports whether b's queries were given up on to make room.
func (b *bucket) jostled() bool { return b.state.Load()&jostledBit != 0 }

// current returns the bucket for a query arriving now.
func (a *admission) current() *bucket {
	now := time.Now().UnixNano()
	if b := a.cur.Load(); b != nil && now < b.until {
		return b
	}
	start := now - now%int64(deadlineGrain)
	b := &bucket{start: start, until: start + int64(deadlineGrain)}
	b.ctx, b.cancel = context.WithDeadline(a.base, time.Unix(0, b.until).Add(a.timeout))
	// Concurrent callers may each make one; the last stored serves the
	// rest, and every one ends at its deadline all the same.
	a.cur.Store(b)
	a.mu.Lock()
	a.forgetLocked(now)
	a.buckets = append(a.buckets, b)
	a.mu.Unlock()
	return b
}

// forgetLocked drops from the front of the list the buckets that can no
// longer be jostled: empty, jostled already, or past their deadline (their
// queries are failing by themselves). The list stays within
// QueryTimeout/deadlineGrain buckets.
func (a *admission) forgetLocked(now int64) {
	n := 0
	for _, b := range a.buckets {
		if s := b.state.Load(); s != 0 && s&jostledBit == 0 && now < b.until+int64(a.timeout) {
			break
		}
		n++
	}
	if n > 0 {
		clear(a.buckets[:n])
		a.buckets = a.buckets[n:]
	}
}

// jostle gives up on the oldest bucket admitted a.jostleAfter ago or more
// that still has queries in flight, and reports whether it found one; its
// queries no longer count, which lets the caller's in. They end at once,
// their context cancelled, and answer SERVFAIL.
func (a *admission) jostle() bool {
	now := time.Now().UnixNano()
	a.mu.Lock()
	a.forgetLocked(now)
	var victim *bucket
	if len(a.buckets) > 0 && now-a.buckets[0].start >= int64(a.jostleAfter) {
		victim = a.buckets[0]
		a.buckets = a.buckets[1:]
	}
	a.mu.Unlock()
	if victim == nil {
		return false
	}
	old := victim.state.Or(jostledBit)
	if old&jostledBit != 0 || old == 0 {
		return false // released meanwhile; the caller may try again
	}
	a.inflight.Add(-old)
	a.jostled.Add(old)
	victim.cancel()
	return true
}
