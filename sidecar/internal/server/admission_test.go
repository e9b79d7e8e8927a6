package server

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestAdmissionDeadlines(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tests := []struct {
		name  string
		check func(t *testing.T, a *admission, cancel context.CancelFunc)
	}{
		{"deadline is the timeout after arrival, at most one grain more", func(t *testing.T, a *admission, _ context.CancelFunc) {
			before := time.Now()
			b := a.admit()
			after := time.Now()
			dl, ok := b.ctx.Deadline()
			if !ok {
				t.Fatal("no deadline")
			}
			if dl.Before(before.Add(timeout)) || dl.After(after.Add(timeout+deadlineGrain)) {
				t.Fatalf("deadline %v after arrival; want %v to %v", dl.Sub(before), timeout, timeout+deadlineGrain)
			}
		}},
		{"queries a grain apart get buckets of their own", func(t *testing.T, a *admission, _ context.CancelFunc) {
			x := a.admit()
			time.Sleep(2 * deadlineGrain) // the pacing under test, not a wait for a condition
			if y := a.admit(); x == y || x.ctx == y.ctx {
				t.Fatal("a query two grains later shares the earlier bucket")
			}
		}},
		{"the context ends at its deadline", func(t *testing.T, a *admission, _ context.CancelFunc) {
			ctx := a.admit().ctx
			select {
			case <-ctx.Done():
			case <-time.After(timeout + time.Second):
				t.Fatal("context still open a second past its deadline")
			}
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				t.Fatalf("Err = %v; want DeadlineExceeded", ctx.Err())
			}
		}},
		{"cancelling base ends every context at once", func(t *testing.T, a *admission, cancel context.CancelFunc) {
			ctx := a.admit().ctx
			cancel()
			select {
			case <-ctx.Done():
			case <-time.After(timeout / 2):
				t.Fatal("context still open after base was cancelled")
			}
			if !errors.Is(ctx.Err(), context.Canceled) {
				t.Fatalf("Err = %v; want Canceled", ctx.Err())
			}
			if err := a.admit().ctx.Err(); !errors.Is(err, context.Canceled) {
				t.Fatalf("a context handed out after the cancel has Err %v; want Canceled", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base, cancel := context.WithCancel(context.Background())
			defer cancel()
			tt.check(t, newAdmission(base, timeout, 100), cancel)
		})
	}
}

func TestAdmissionLimit(t *testing.T) {
	a := newAdmission(context.Background(), time.Minute, 3)
	a.jostleAfter = time.Hour // nothing grows old enough here
	var held []*bucket
	for range 3 {
		b := a.admit()
		if b == nil {
			t.Fatal("refused below the limit")
		}
		held = append(held, b)
	}
	if a.admit() != nil {
		t.Fatal("admitted past the limit")
	}
	if got := a.inflight.Load(); got != 3 {
		t.Fatalf("%d in flight, want 3", got)
	}
	a.release(held[0])
	if a.admit() == nil {
		t.Fatal("refused after a release")
	}
	if a.jostled.Load() != 0 || held[1].jostled() {
		t.Fatal("jostled with nothing old enough")
	}
}

// At the limit, the oldest queries admitted jostleAfter ago or more make
// room, and only those.
func TestAdmissionJostles(t *testing.T) {
	const after = 20 * time.Millisecond
	a := newAdmission(context.Background(), time.Minute, 4)
	a.jostleAfter = after
	// admitPair admits two queries of one grain, which share a bucket; a
	// pair that a grain's end split (the test preempted between the two)
	// is let go and admitted again.
	admitPair := func() []*bucket {
		for range 100 {
			p := []*bucket{a.admit(), a.admit()}
			if p[0] == p[1] {
				return p
			}
			a.release(p[0])
			a.release(p[1])
		}
		t.Fatal("100 pairs of queries admitted back to back never shared a bucket")
		return nil
	}
	old := admitPair()
	time.Sleep(after + deadlineGrain) // the age under test, not a wait for a condition
	young := admitPair()
	if old[0] == young[0] {
		t.Fatal("queries of two grains should not share a bucket")
	}

	b := a.admit()
	if b == nil {
		t.Fatal("a new query found no room though two queries were old enough to give up on")
	}
	if !old[0].jostled() || young[0].jostled() || b.jostled() {
		t.Fatalf("jostled: old %v, young %v, new %v; want only the old", old[0].jostled(), young[0].jostled(), b.jostled())
	}
	if err := old[0].ctx.Err(); !errors.Is(err, context.Canceled) {
		t.Fatalf("the jostled queries' context: %v, want cancelled", err)
	}
	if got := a.jostled.Load(); got != 2 {
		t.Fatalf("jostled count %d, want 2", got)
	}
	if got := a.inflight.Load(); got != 3 {
		t.Fatalf("%d in flight, want 3 (two young, one new)", got)
	}
	// Releasing the jostled queries, which end now, must not count them
	// off again.
	for _, x := range old {
		a.release(x)
	}
	if got := a.inflight.Load(); got != 3 {
		t.Fatalf("%d in flight after the jostled queries ended, want 3", got)
	}
	if a.admit() == nil {
		t.Fatal("refused below the limit")
	}
	// Full again, with nothing old enough: refused.
	if a.admit() != nil {
		t.Fatal("admitted past the limit with nothing old enough to give up on")
	}
}

// Admitting, releasing and jostling from many goroutines at once leaves
// the count right (run with -race).
func TestAdmissionConcurrent(t *testing.T) {
	a := newAdmission(context.Background(), time.Minute, 50)
	a.jostleAfter = time.Millisecond
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 2000 {
				b := a.admit()
				if b == nil {
					continue
				}
				if (g+i)%7 == 0 {
					time.Sleep(time.Millisecond) // some queries live long enough to be jostled
				}
				a.release(b)
			}
		})
	}
	wg.Wait()
	if got := a.inflight.Load(); got != 0 {
		t.Fatalf("%d in flight after every query released", got)
	}
	t.Logf("%d jostled", a.jostled.Load())
}
