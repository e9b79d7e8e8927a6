package cache

import "time"

// Clock tells the time in nanoseconds from a fixed point. The cache and
// its otter store read the same one, so that a test can move both.
type Clock interface {
	NowNano() int64
}

// systemClock counts from the Unix time at its creation on the monotonic
// clock, as otter's own clock does: a step of the wall clock moves neither
// expiry.
type systemClock struct {
	start      time.Time
	startNanos int64
}

func newSystemClock() *systemClock {
	now := time.Now()
	return &systemClock{start: now, startNanos: now.UnixNano()}
}

func (c *systemClock) NowNano() int64 { return c.startNanos + int64(time.Since(c.start)) }

// otterClock gives a test's Clock to otter. It never ticks: otter then
// runs no clean-up goroutine of its own, and removes expired entries as
// reads and writes come.
type otterClock struct{ Clock }

func (otterClock) Tick(time.Duration) <-chan time.Time { return nil }
