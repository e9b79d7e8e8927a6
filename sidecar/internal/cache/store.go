package cache

import (
	"context"
	"log/slog"
	"time"

	"github.com/maypok86/otter/v2"
)

// store keeps the entries in an otter cache: W-TinyLFU admission and
// eviction keeps the hit ratio up when a burst of names asked for once
// (a scan) passes through, where a plain LRU would flush the hot entries;
// per-entry expiry removes an entry once it can no longer be served, fresh
// or stale. A hand-rolled map would need all of this again.
type store struct {
	c *otter.Cache[string, *entry]
	m *metrics
}

// kibibyte is the unit of an entry's weight: an answer counts once per KiB
// or part of one against the size, so that a few large answers cannot
// hold more memory than the size says.
const kibibyte = 1024

func newStore(size int, clock Clock, m *metrics, log *slog.Logger) (*store, error) {
	opts := &otter.Options[string, *entry]{
		MaximumWeight: uint64(size),
		Weigher: func(_ string, e *entry) uint32 {
			return uint32(max(1, (e.tpl.Size()+kibibyte-1)/kibibyte))
		},
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, *entry]) time.Duration {
			return e.Value.keep()
		}),
		// Under the entry's bucket lock, and only touching the metrics:
		// every removal, replacement included, takes its entry out of
		// the count; only removals to make room are evictions.
		OnAtomicDeletion: func(e otter.DeletionEvent[string, *entry]) {
			m.entries[e.Value.kind].Dec()
			if e.Cause == otter.CauseOverflow {
				m.evictions[e.Value.kind].Inc()
			}
		},
		// Maintenance (applying the reads to the eviction policy,
		// evicting) runs on whichever goroutine finds it due, amortised
		// over many operations, rather than in a goroutine started for
		// it: a read loop that answers hits must not spawn goroutines.
		// Nothing the cache runs calls back into it, so running tasks
		// in place cannot deadlock.
		Executor: func(fn func()) { fn() },
		Logger:   slogLogger{log},
	}
	if clock != nil {
		opts.Clock = otterClock{clock}
	}
	c, err := otter.New(opts)
	if err != nil {
		return nil, err
	}
	return &store{c: c, m: m}, nil
}

// get returns the entry of key, if otter still has it (fresh or within
// its stale window). key may be a view of a caller's buffer (lookupKey):
// otter does not keep the keys it is asked for.
func (s *store) get(key string) (*entry, bool) { return s.c.GetIfPresent(key) }

// set keeps e under key, replacing what was there.
func (s *store) set(key string, e *entry) {
	s.m.entries[e.kind].Inc()
	s.c.Set(key, e)
}

// len is the number of entries, for tests.
func (s *store) len() int { return s.c.EstimatedSize() }

// close stops otter's clean-up goroutine.
func (s *store) close() { s.c.StopAllGoroutines() }

// slogLogger gives otter's rare warnings to a slog.Logger.
type slogLogger struct{ log *slog.Logger }

func (l slogLogger) Warn(ctx context.Context, msg string, err error) {
	l.log.WarnContext(ctx, "cache: "+msg, "err", err)
}

func (l slogLogger) Error(ctx context.Context, msg string, err error) {
	l.log.ErrorContext(ctx, "cache: "+msg, "err", err)
}
