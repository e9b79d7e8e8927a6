package testkit

import (
	"sync/atomic"
	"time"
)

// StallWatch measures how late the test process's own timers fire. A test
// that holds a component to deadlines of a second or two cannot tell, from
// the component's failures alone, a component that was slow from a process
// the machine did not run (CI and a loaded 2-core machine do this for a
// second at a time): it asks the watch, and runs again what the machine
// spoiled.
type StallWatch struct {
	max  atomic.Int64 // nanoseconds
	stop chan struct{}
	done chan struct{}
}

// stallTick is how often the watch's timer fires: fine enough to see a
// stall of tens of milliseconds, cheap beside any test.
const stallTick = 10 * time.Millisecond

// WatchStalls starts a StallWatch; Stop ends it.
func WatchStalls() *StallWatch {
	w := &StallWatch{stop: make(chan struct{}), done: make(chan struct{})}
	// Started here, not in the goroutine: a stall from the moment
	// WatchStalls returns counts.
	tick := time.NewTicker(stallTick)
	last := time.Now()
	go func() {
		defer close(w.done)
		defer tick.Stop()
		for {
			select {
			case <-w.stop:
				return
			case now := <-tick.C:
				// A ticker drops the ticks it could not deliver, so the
				// gap between two is the stall plus one tick.
				if late := int64(now.Sub(last) - stallTick); late > w.max.Load() {
					w.max.Store(late)
				}
				last = now
			}
		}
	}()
	return w
}

// Max is the longest stall seen so far.
func (w *StallWatch) Max() time.Duration { return time.Duration(w.max.Load()) }

// Stop ends the watch and returns the longest stall it saw.
func (w *StallWatch) Stop() time.Duration {
	close(w.stop)
	<-w.done
	return w.Max()
}
