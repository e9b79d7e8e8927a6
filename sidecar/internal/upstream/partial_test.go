package upstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

func TestPartialWindow(t *testing.T) {
	const window = time.Second
	q := func(name string) *dnswire.Msg {
		m := packQuery(t, name, dns.TypeA)
		return &m
	}
	type outcome struct {
		name     string
		timedOut bool
	}
	names := func(prefix string, n int, timedOut bool) []outcome {
		var out []outcome
		for i := range n {
			out = append(out, outcome{fmt.Sprintf("%s%d.example.", prefix, i), timedOut})
		}
		return out
	}
	repeat := func(o outcome, n int) []outcome {
		var out []outcome
		for range n {
			out = append(out, o)
		}
		return out
	}
	tests := []struct {
		name     string
		outcomes []outcome
		judged   bool
		failing  bool
	}{
		{"too few names to judge", names("t", minPartialNames-1, true), false, false},
		{"more than half of enough names", append(names("t", 11, true), names("a", 9, false)...), true, true},
		{"half is not more than half", append(names("t", 10, true), names("a", 10, false)...), true, false},
		{"one slow name asked again and again", append(repeat(outcome{"slow.example.", true}, 100), names("a", 25, false)...), true, false},
		{"a name answered and timed out counts as timed out", append(append(names("t", 11, false), names("t", 11, true)...), names("a", 9, false)...), true, true},
		{"letter case does not make another name", append(append(names("t", 11, true), names("T", 11, true)...), names("a", 9, false)...), true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var w partialWindow
			start := time.Now()
			for _, o := range tt.outcomes {
				if _, judged := w.note(q(o.name), o.timedOut, start, window); judged {
					t.Fatal("judged before the window's end")
				}
			}
			// The window closes at the first outcome a window after it opened.
			v, judged := w.note(q(tt.outcomes[0].name), tt.outcomes[0].timedOut, start.Add(window), window)
			if judged != tt.judged || v.failing != tt.failing {
				t.Errorf("judged %v failing %v (%+v), want %v %v", judged, v.failing, v, tt.judged, tt.failing)
			}
			if w.open.Load() {
				t.Error("the window is still open after its end")
			}
		})
	}

	t.Run("answers alone open no window", func(t *testing.T) {
		var w partialWindow
		now := time.Now()
		for i := range 50 {
			w.note(q(fmt.Sprintf("a%d.example.", i)), false, now, window)
		}
		if w.open.Load() {
			t.Fatal("a window opened without a timeout")
		}
	})

	t.Run("the hold doubles until a good window", func(t *testing.T) {
		var w partialWindow
		for i, want := range []time.Duration{1, 2, 4, 8, 16, 32, 32} {
			if got := w.takenOut(window); got != want*window {
				t.Fatalf("hold %d: %s, want %s", i, got, want*window)
			}
		}
		// A window of one slow name among many answered: good.
		now := time.Now()
		w.note(q("slow.example."), true, now, window)
		for _, o := range names("a", 2*minPartialNames, false) {
			w.note(q(o.name), false, now, window)
		}
		if v, judged := w.note(q("a0.example."), false, now.Add(window), window); !judged || v.failing {
			t.Fatalf("a window of mostly answers judged %v failing %v", judged, v.failing)
		}
		if got := w.takenOut(window); got != window {
			t.Errorf("hold after a good window %s, want %s", got, window)
		}
	})
}

// An upstream that answers some queries and silently drops most others is
// taken out of rotation within about a query deadline and a window, with
// the production values of both; no client query fails meanwhile (each
// dropped one is answered by the other upstream within its deadline); it
// stays out while it keeps dropping, and comes back through its probes
// once it stops.
func TestGroupPartialFailure(t *testing.T) {
	var r *rig
	var start time.Time
	for attempt := 1; ; attempt++ {
		r = newRig(t, 2, GroupOptions{Policy: Sequential, PartialWindow: config.HealthPartialWindow,
			ProbeInterval: 200 * time.Millisecond}, nil)
		r.ups[0].dropPct.Store(70)
		start = time.Now()
		stalls := testkit.WatchStalls()
		err := detectPartialFailure(r)
		stall := stalls.Stop()
		if err == nil {
			break
		}
		// Every query in flight through a stall of the test process (the
		// clients, the servers and the group are all in it) times out on
		// both upstreams alike: the healthy one looks silent too.
		if stall < partialMaxStall || attempt == 3 {
			t.Fatalf("%v (the test process stalled at most %s)", err, stall)
		}
		t.Logf("%v; the test process stalled %s, not a measurement of the group: again", err, stall)
	}
	m0 := r.g.members[0]

	// Out while it keeps dropping: the hold, then three probes answered in
	// a row, which at 30% is unlikely soon; and queries go to upstream 1.
	for i := range 20 {
		if who := r.mustQuery(answerTimeout, fmt.Sprintf("after%d.example.", i)); who != 1 {
			t.Fatalf("query %d answered by upstream %d while it is out", i, who)
		}
	}
	r.ups[0].dropPct.Store(0)
	eventually(t, 20*time.Second, "upstream 0 to come back", func() bool { return !m0.down.Load() })
	if took := time.Since(start); took < config.HealthPartialWindow {
		t.Errorf("back %s after it was first seen failing, within its hold", took)
	}
	if who := r.mustQuery(answerTimeout, "back.example."); who != 0 {
		t.Errorf("answered by upstream %d once upstream 0 is back", who)
	}
}

// partialMaxStall is the longest stall of the test process after which
// TestGroupPartialFailure's queries, each with half of its 2 s deadline to
// spare, still measure the group.
const partialMaxStall = 500 * time.Millisecond

// detectPartialFailure asks names of r's group from 32 clients, with the
// production deadline, until upstream 0 (which drops 70% of its queries) is
// taken out for partial failure, and checks that it was taken out alone,
// once, and that no query failed meanwhile: each dropped one is answered
// by upstream 1 within its deadline.
func detectPartialFailure(r *rig) error {
	m0 := r.g.members[0]
	start := time.Now()
	var (
		next     atomic.Int64
		failed   atomic.Int64
		firstErr atomic.Value
		wg       sync.WaitGroup
		stop     = make(chan struct{})
	)
	// Enough clients that the connection always answers some while a
	// dropped query waits: its timeouts are those of slow names, never
	// counted by the failures in a row.
	for range 32 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("p%d.example.", next.Add(1))
				// The production deadline: a dropped query costs half of it.
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, _, err := r.query(ctx, name)
				cancel()
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Errorf("query %s: %w", name, err))
				}
			}
		})
	}
	out := func() bool {
		m0.mu.Lock()
		defer m0.mu.Unlock()
		return m0.partialOut
	}
	deadline := time.Now().Add(20 * time.Second)
	for !out() && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	detected := time.Since(start)
	close(stop)
	wg.Wait()
	r.t.Logf("partial failure detected after %s (%d queries)", detected.Round(time.Millisecond), next.Load())
	var errs []error
	if !out() {
		errs = append(errs, fmt.Errorf("upstream 0 not taken out within 20s"))
	}
	if got := r.counter(r.m.PartialFailures, 0); got != 1 {
		errs = append(errs, fmt.Errorf("partial_failures_total = %v, want 1", got))
	}
	if r.health(0) != 0 || r.health(1) != 1 {
		errs = append(errs, fmt.Errorf("health %v %v, want 0 1", r.health(0), r.health(1)))
	}
	if n := failed.Load(); n != 0 {
		errs = append(errs, fmt.Errorf("%d queries failed, the first: %v", n, firstErr.Load()))
	}
	return errors.Join(errs...)
}

// The group's last healthy upstream is never taken out for partial
// failure: slow answers beat none.
func TestGroupPartialFailureKeepsLastHealthy(t *testing.T) {
	r := newRig(t, 2, GroupOptions{Policy: Sequential, PartialWindow: 500 * time.Millisecond, ProbeInterval: time.Hour}, nil)
	r.ups[0].gate.kill()
	r.driveDown(0, 10*time.Second, true)
	r.ups[1].dropPct.Store(70)
	// Enough clients that its timeouts are slow names, never counted by
	// the failures in a row, and windows enough to judge it by.
	deadline := time.Now().Add(3 * time.Second)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for time.Now().Before(deadline) {
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				_, _, _ = r.query(ctx, fmt.Sprintf("l%d.example.", next.Add(1)))
				cancel()
			}
		})
	}
	wg.Wait()
	if n := next.Load(); n < 3*minPartialNames {
		t.Fatalf("only %d queries: too few to judge", n)
	}
	// It was judged failing (and warned about), and kept. (Its timeouts
	// may still, now and then, come three in a row from a silent
	// connection, which marks it down the usual way, until an answer.)
	if r.g.members[1].lastPartialWarn.Load() == 0 {
		t.Fatal("no window judged it failing")
	}
	if got := r.counter(r.m.PartialFailures, 1); got != 0 {
		t.Errorf("partial_failures_total = %v, want 0", got)
	}
}
