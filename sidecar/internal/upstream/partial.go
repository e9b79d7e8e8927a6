package upstream

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// Partial failure. An upstream that answers some queries and silently drops
// others (an overloaded resolver shedding load, a middlebox losing packets
// of one kind, a broken anycast node behind a healthy one) is never marked
// down by the count of failures in a row: its answers keep resetting it,
// and a timeout while the connection answered others is taken for a slow
// name (ErrSlowAnswer). Its clients meanwhile wait out half their deadline
// for every query dropped. So each upstream's outcomes are also weighed
// over a window: when more than half of the distinct names asked of it in
// the window timed out, with at least minPartialNames names to judge by, it
// is taken out of rotation. Counting names rather than queries keeps one
// slow name, asked again and again, from weighing more than once.
//
// A window opens at a timeout, so that an upstream that never times out
// costs one atomic load per query. An upstream taken out comes back only
// through its probes: partialProbes answered in a row, and no sooner than a
// hold that doubles each time it is taken out again without a good window
// in between, so that one that keeps failing spends most of its time out
// rather than half of it. It is never the group's last healthy upstream:
// slow answers from it beat SERVFAIL from none.

const (
	// minPartialNames is the fewest distinct names a window must hold to
	// judge the upstream by.
	minPartialNames = 20
	// partialProbes is how many health probes in a row an upstream taken
	// out for partial failure must answer to come back.
	partialProbes = 3
	// maxHoldDoublings caps the hold at 32 windows.
	maxHoldDoublings = 5
)

// partialWindow holds one upstream's outcomes, by distinct name, over the
// window under way.
type partialWindow struct {
	open atomic.Bool // collecting: a query timed out less than a window ago

	mu       sync.Mutex
	start    time.Time
	names    map[uint64]bool // name hash → timed out at least once
	timedOut int
	streak   int // times taken out without a good window in between
}

var nameSeed = maphash.MakeSeed()

// nameKey hashes q's name, without regard to case: A and AAAA of one name,
// or its retries, are one name.
func nameKey(q *dnswire.Msg) uint64 {
	var buf [255]byte
	return maphash.Bytes(nameSeed, dnswire.FoldName(buf[:0], q.QName()))
}

// verdict is what a window found when it closed.
type verdict struct {
	failing         bool // more than half of enough names timed out
	names, timedOut int
}

// note records an outcome for q's name at now, opening a window on a
// timeout, and closes the window once it is window old, returning its
// verdict (judged false when there was nothing to judge).
func (w *partialWindow) note(q *dnswire.Msg, timedOut bool, now time.Time, window time.Duration) (v verdict, judged bool) {
	if !timedOut && !w.open.Load() {
		return verdict{}, false
	}
	key := nameKey(q)
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.open.Load() {
		if !timedOut {
			return verdict{}, false
		}
		w.start, w.timedOut = now, 0
		if w.names == nil {
			w.names = make(map[uint64]bool)
		}
		clear(w.names)
		w.open.Store(true)
	}
	if timedOut {
		if !w.names[key] {
			w.timedOut++
		}
		w.names[key] = true
	} else if _, seen := w.names[key]; !seen {
		w.names[key] = false
	}
	if now.Sub(w.start) < window {
		return verdict{}, false
	}
	w.open.Store(false)
	v = verdict{names: len(w.names), timedOut: w.timedOut}
	if v.names < minPartialNames {
		return v, false
	}
	v.failing = 2*v.timedOut > v.names
	if !v.failing {
		w.streak = 0
	}
	return v, true
}

// takenOut counts one more time the upstream was taken out and returns how
// long it stays out at least: a window, doubled for each time before
// without a good window in between.
func (w *partialWindow) takenOut(window time.Duration) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	hold := window << min(w.streak, maxHoldDoublings)
	w.streak++
	return hold
}

// weigh records the outcome of an attempt on m for the partial-failure
// window, and takes m out when a window closes failing.
func (g *Group) weigh(m *member, q *dnswire.Msg, timedOut bool) {
	v, judged := m.partial.note(q, timedOut, time.Now(), g.opts.PartialWindow)
	if !judged || !v.failing {
		return
	}
	g.partialDown(m, v)
}

// partialDown takes m out of rotation for partial failure, unless it is
// the group's last healthy upstream.
func (g *Group) partialDown(m *member, v verdict) {
	g.downMu.Lock()
	defer g.downMu.Unlock()
	if g.healthyCount() <= 1 {
		if warnLimited(&m.lastPartialWarn) {
			g.log.Warn("upstream failing partially, kept in rotation as the group's last healthy upstream",
				"upstream", m.name, "names", v.names, "timed_out", v.timedOut, "window", g.opts.PartialWindow)
		}
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.down.Load() {
		return
	}
	hold := m.partial.takenOut(g.opts.PartialWindow)
	m.partialOut, m.partialUntil, m.probeOK = true, time.Now().Add(hold), 0
	m.partialFailures.Inc()
	g.log.Warn("upstream taken out of rotation: more than half of the names asked timed out",
		"upstream", m.name, "names", v.names, "timed_out", v.timedOut, "window", g.opts.PartialWindow, "hold", hold)
	g.markDownLocked(m)
}
