package upstream

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// Once every upstream is marked down, queries fail at once with ErrAllDown
// (the server answers SERVFAIL with EDE 22), never a hang until the
// deadline.
func TestGroupAllDownFast(t *testing.T) {
	r := newRig(t, 2, GroupOptions{}, nil)
	r.ups[0].gate.kill()
	r.ups[1].gate.kill()
	r.driveDown(0, 5*time.Second, false)
	r.driveDown(1, 5*time.Second, false)
	if r.g.Healthy() {
		t.Fatal("Healthy() with every upstream down")
	}
	var took []time.Duration
	for i := range 50 {
		start := time.Now()
		_, _, err := r.query(ctxTimeout(t, 2*time.Second), fmt.Sprintf("x%d.example.", i))
		took = append(took, time.Since(start))
		if !errors.Is(err, ErrAllDown) {
			t.Fatalf("query %d: error %v, want ErrAllDown", i, err)
		}
	}
	slices.Sort(took)
	t.Logf("all down: median %s, slowest %s", took[len(took)/2], took[len(took)-1])
	if slowest := took[len(took)-1]; slowest > 500*time.Millisecond {
		t.Errorf("slowest all-down answer took %s, want ≤ 500ms", slowest)
	}
	for i := range r.ups {
		if r.health(i) != 0 {
			t.Errorf("health_state{upstream %d} = %v, want 0", i, r.health(i))
		}
	}
}

// BenchmarkGroupAllDown measures what a query costs the Group when every
// upstream is down and each has its one trial query in flight (as while a
// black-holed upstream holds it until its deadline): the time to
// ErrAllDown.
func BenchmarkGroupAllDown(b *testing.B) {
	r := newRig(b, 2, GroupOptions{}, nil)
	r.ups[0].gate.kill()
	r.ups[1].gate.kill()
	r.driveDown(0, 5*time.Second, false)
	r.driveDown(1, 5*time.Second, false)
	for _, m := range r.g.members {
		m.trial.Store(true)
	}
	q := packQuery(b, "bench.example.", 1)
	ctx := ctxTimeout(b, time.Minute)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.g.Exchange(ctx, q); !errors.Is(err, ErrAllDown) {
			b.Fatalf("error %v, want ErrAllDown", err)
		}
	}
}

// A returning upstream is noticed by its probe within about a second
// (HEALTH_CHECK_INTERVAL, 1s), and the first query after that is answered
// by it, both when another upstream served meanwhile and when all were down.
func TestGroupRecovery(t *testing.T) {
	tests := []struct {
		name string
		n    int // upstreams; upstream 0 dies and returns, the others stay up
	}{
		{"one of two", 2},
		{"all down", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, tt.n, GroupOptions{Policy: Sequential}, nil)
			r.mustQuery(answerTimeout, "warm.example.")
			r.ups[0].gate.kill()
			r.driveDown(0, 5*time.Second, tt.n > 1)
			// After three failed probes (waits of about 125, 250 and 500 ms)
			// the backoff has reached its 1s cap: the slowest case.
			eventually(t, 5*time.Second, "three failed probes", func() bool {
				return r.counter(r.m.HealthCheckFailures, 0) >= 3
			})
			r.ups[0].gate.open(t)
			back := time.Now()
			for i := 0; ; i++ {
				who, _, err := r.query(ctxTimeout(t, answerTimeout), fmt.Sprintf("r%d.example.", i))
				if who == 0 {
					break
				}
				switch {
				case tt.n == 1 && !errors.Is(err, ErrAllDown):
					t.Fatalf("while down: %v, %d; want ErrAllDown at once", err, who)
				case tt.n > 1 && (err != nil || who != 1):
					t.Fatalf("while down: answered by %d, err %v; want upstream 1", who, err)
				}
				if time.Since(back) > 3*time.Second {
					t.Fatal("upstream 0 not back 3s after its return")
				}
				time.Sleep(5 * time.Millisecond) // polling interval
			}
			took := time.Since(back)
			t.Logf("first query answered by the returning upstream %s after its return", took.Round(time.Millisecond))
			// The probe backoff is capped at 1s ±20%; the rest is margin for a
			// loaded machine.
			if took > 2*time.Second {
				t.Errorf("recovery took %s, want about a second (≤ 2s)", took)
			}
			if r.health(0) != 1 {
				t.Error("health_state not back to 1")
			}
		})
	}
}

// Many queries waiting for one dial that fails see one failure of the
// upstream, not one each: a single failed dial under load must not mark an
// upstream down. Three failed dials in a row do.
func TestGroupSharedDialFailureCountsOnce(t *testing.T) {
	// The dial fails after DialTimeout; every query of a wave must have
	// joined it by then, which leaves a loaded machine 500 ms to start them.
	r := newRig(t, 2, GroupOptions{Policy: Sequential}, func(i int, o *DoTOptions) {
		o.DialTimeout = 500 * time.Millisecond
	})
	r.ups[0].srv.Behavior.BlackHole.Store(true)
	wave := func(w int) {
		t.Helper()
		const n = 20
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// 3s deadline: the first attempt may take 1.5s, far more
				// than the 500ms dial, so every query sees the dial fail.
				who, _, err := r.query(ctxTimeout(t, 3*time.Second), fmt.Sprintf("w%d-%d.example.", w, i))
				if err == nil && who != 1 {
					err = fmt.Errorf("answered by upstream %d, want 1", who)
				}
				if err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	wave(0)
	if got := r.g.members[0].fails.Load(); got != 1 || r.health(0) != 1 {
		t.Fatalf("after one failed dial shared by 20 queries: %d failures counted, health %v; want 1 and up", got, r.health(0))
	}
	if got := r.counter(r.m.TLSHandshakeFailure, 0); got != 1 {
		t.Fatalf("tls_handshake_failures_total = %v; the queries did not share one dial", got)
	}
	wave(1)
	wave(2)
	if r.health(0) != 0 {
		t.Fatalf("not down after three failed dials in a row (%d counted)", r.g.members[0].fails.Load())
	}
}

// One probe at a time: however many queries fail on a down upstream, the
// probes that reach it come one after another.
func TestGroupProbeSingleFlight(t *testing.T) {
	const probeTimeout = 200 * time.Millisecond
	r := newRig(t, 2, GroupOptions{Policy: Sequential, ProbeInterval: 20 * time.Millisecond, ProbeTimeout: probeTimeout}, nil)
	r.mustQuery(answerTimeout, "warm.example.")
	r.ups[0].silent.Store(true)
	// Queries still in flight on the silent upstream when it is marked down
	// fail after it, and each would start a probe if probes were not single.
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, _ = r.query(ctxTimeout(t, 600*time.Millisecond), fmt.Sprintf("s%d.example.", i))
		}()
	}
	wg.Wait()
	if r.health(0) != 0 {
		t.Fatal("silent upstream not marked down")
	}
	start, before := time.Now(), r.ups[0].nsQueries.Load()
	const window = time.Second
	eventually(t, 2*window, "the observation window", func() bool { return time.Since(start) >= window })
	probes := r.ups[0].nsQueries.Load() - before
	// Sequential probes each wait their timeout: at most window/timeout+1.
	if limit := int64(window/probeTimeout) + 1; probes > limit || probes == 0 {
		t.Errorf("%d probes reached the upstream in %s, want 1..%d", probes, window, limit)
	}
	t.Logf("%d probes in %s", probes, window)
}

// An answer from an upstream marked down (a query that was in flight on it)
// puts it back at once, without waiting for the probe.
func TestGroupAnswerBringsUpstreamBack(t *testing.T) {
	r := newRig(t, 2, GroupOptions{Policy: Sequential, MaxFails: 1, ProbeInterval: time.Hour}, nil)
	r.mustQuery(answerTimeout, "warm.example.")
	r.ups[0].srv.Behavior.SetDelay(300 * time.Millisecond)
	slow := make(chan int, 1)
	go func() {
		// Alone on upstream 0 with the whole deadline: it waits for the
		// delayed answer.
		who, _, _ := r.query(context.Background(), "slow.example.")
		slow <- who
	}()
	eventually(t, time.Second, "the slow query to reach upstream 0", func() bool { return r.ups[0].srv.Queries() >= 2 })
	// Mark upstream 0 down the way a failure would.
	r.g.failed(r.g.members[0], errors.New("synthetic failure"), time.Now())
	if r.health(0) != 0 {
		t.Fatal("not marked down")
	}
	if who := <-slow; who != 0 {
		t.Fatalf("slow query answered by %d, want 0", who)
	}
	if r.health(0) != 1 || r.g.members[0].down.Load() {
		t.Error("an answer from the down upstream did not bring it back")
	}
}

// A query that times out while its connection answers other queries is a
// slow name, not a sick upstream: even at MaxFails 1, a burst of timeouts
// for names the upstream is slow to resolve (A and AAAA together, a
// client's retries) leaves it up. The same timeouts on a connection that
// answered nothing meanwhile still count: that upstream may be dead.
func TestGroupSlowNameNotCounted(t *testing.T) {
	tests := []struct {
		name       string
		otherLoad  bool // other queries are answered on the connection while the slow ones wait
		wantHealth float64
	}{
		{"connection answering other queries", true, 1},
		{"connection answering nothing", false, 0},
	}
	for _, tr := range transports {
		for _, tt := range tests {
			t.Run(tr+"/"+tt.name, func(t *testing.T) {
				var slowSeen atomic.Int64
				srv := newTestServer(t, tr, dnstest.Options{Handler: func(q *dns.Msg) *dns.Msg {
					if len(q.Question) == 1 && strings.HasPrefix(q.Question[0].Name, "slow") {
						slowSeen.Add(1)
						return nil // answered long after any deadline
					}
					return dnstest.DefaultHandler(q)
				}})
				m := NewMetrics(prometheus.NewRegistry())
				d := newTestUpstream(t, srv, func(o *DoTOptions) { o.PoolSize = 1; o.Metrics = m })
				g, err := NewGroup(testGroupOptions(GroupOptions{Upstreams: []Upstream{d}, MaxFails: 1, ProbeInterval: time.Hour,
					Logger: testLogger(), Metrics: m}))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = g.Close() })
				if _, err := g.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "warm.example.", dns.TypeA)); err != nil {
					t.Fatal(err)
				}

				const slow = 5
				ctx := newExpiringCtx()
				errs := make(chan error, slow)
				for i := range slow {
					go func() {
						_, err := g.Exchange(ctx, packQuery(t, fmt.Sprintf("slow%d.example.", i), dns.TypeAAAA))
						errs <- err
					}()
				}
				eventually(t, 2*time.Second, "the slow queries to reach the upstream", func() bool { return slowSeen.Load() == slow })
				if tt.otherLoad {
					for i := range 3 {
						if _, err := g.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, fmt.Sprintf("fast%d.example.", i), dns.TypeA)); err != nil {
							t.Fatal(err)
						}
					}
				}
				ctx.expire()
				for range slow {
					if err := <-errs; !errors.Is(err, context.DeadlineExceeded) {
						t.Fatalf("slow query: %v, want DeadlineExceeded", err)
					} else if got := errors.Is(err, ErrSlowAnswer); got != tt.otherLoad {
						t.Errorf("slow query: %v; errors.Is(ErrSlowAnswer) = %v, want %v", err, got, tt.otherLoad)
					}
				}
				if got := counterValue(m.HealthState.WithLabelValues(d.Name())); got != tt.wantHealth {
					t.Errorf("health_state = %v after %d timeouts, want %v", got, slow, tt.wantHealth)
				}
			})
		}
	}
}

// Late answers to queries given up on are the upstream serving: a query
// that times out while only such answers came is a slow name
// (ErrSlowAnswer), not a silent connection. Under a flood the server gives
// up on many queries to make room for newer ones, and their answers may be
// all that comes for a while.
func TestSlowNameBesideLateAnswers(t *testing.T) {
	release := make(chan struct{})
	var lateSeen atomic.Bool
	srv := dnstest.New(t, dnstest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		switch {
		case strings.HasPrefix(q.Question[0].Name, "late"):
			lateSeen.Store(true)
			<-release // answered once the test says so
			return dnstest.DefaultHandler(q)
		case strings.HasPrefix(q.Question[0].Name, "slow"):
			return nil
		}
		return dnstest.DefaultHandler(q)
	}})
	m := NewMetrics(prometheus.NewRegistry())
	d := newTestDoT(t, srv, func(o *DoTOptions) { o.PoolSize, o.Metrics = 1, m })
	if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "warm.example.", dns.TypeA)); err != nil {
		t.Fatal(err)
	}

	// ask starts a query whose deadline passes when the test says so.
	ask := func(name string) (*expiringCtx, <-chan error) {
		ctx, errc := newExpiringCtx(), make(chan error, 1)
		go func() {
			_, err := d.Exchange(ctx, packQuery(t, name, dns.TypeA))
			errc <- err
		}()
		return ctx, errc
	}
	given, lateErr := ask("late.example.")
	eventually(t, answerTimeout, "the upstream to read the query it answers late", lateSeen.Load)
	given.expire() // given up on: its answer, when it comes, is late
	if err := <-lateErr; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("query given up on: %v, want DeadlineExceeded", err)
	}

	slow, slowErr := ask("slow.example.")
	eventually(t, answerTimeout, "the slow query to be in flight", func() bool {
		c := d.activeConns()
		return len(c) == 1 && c[0].load.Load() == 1
	})
	close(release)
	eventually(t, answerTimeout, "the late answer to arrive", func() bool {
		return counterValue(m.MismatchedResponses.WithLabelValues(d.Name())) == 1
	})
	slow.expire()
	if err := <-slowErr; !errors.Is(err, ErrSlowAnswer) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow query beside a late answer: %v, want ErrSlowAnswer and DeadlineExceeded", err)
	}
}

// A query that times out on a connection that answered nothing meanwhile
// is a slow name when another connection to the upstream answered: under a
// flood of names the upstream never answers, a connection can carry
// nothing else for a while, and its silence is theirs, not the upstream's.
func TestSlowNameOnAQuietConnection(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			var slowSeen atomic.Bool
			srv := newTestServer(t, tr, dnstest.Options{Handler: func(q *dns.Msg) *dns.Msg {
				if strings.HasPrefix(q.Question[0].Name, "slow") {
					slowSeen.Store(true)
					return nil
				}
				return dnstest.DefaultHandler(q)
			}})
			d := newTestUpstream(t, srv, nil) // a pool of 2
			if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "warm.example.", dns.TypeA)); err != nil {
				t.Fatal(err)
			}
			d.grow()
			eventually(t, answerTimeout, "a second connection", func() bool { return d.usable() == 2 })

			// The slow query takes one connection (the least loaded), the
			// answered ones the other.
			ctx := newExpiringCtx()
			errc := make(chan error, 1)
			go func() {
				_, err := d.Exchange(ctx, packQuery(t, "slow.example.", dns.TypeA))
				errc <- err
			}()
			eventually(t, answerTimeout, "the slow query to reach the upstream", slowSeen.Load)
			for i := range 3 {
				if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, fmt.Sprintf("fast%d.example.", i), dns.TypeA)); err != nil {
					t.Fatal(err)
				}
			}
			ctx.expire()
			if err := <-errc; !errors.Is(err, ErrSlowAnswer) || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("slow query on a quiet connection beside an answering one: %v, want ErrSlowAnswer and DeadlineExceeded", err)
			}
		})
	}
}
