package upstream

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// An upstream that closes each connection after 25 queries, under a load
// that pipelines far more than that on each: every query is answered. Three
// things make it so, each of which alone left queries failing (before them,
// 11 to 17% of these queries got SERVFAIL, with burning processes loading
// the machine; a third in the field): the answers a reset connection
// delivered before the reset are read rather than discarded with the
// socket (conn.writeFailed); a new connection lost before any answer costs
// its queries one more send rather than an error (newconn.go); and the
// upstream's limit is learned, so that no connection carries queries past
// it (budget.go).
func TestUpstreamClosingAfterNQueriesUnderLoad(t *testing.T) {
	for _, pool := range []int{1, 2} {
		t.Run(fmt.Sprintf("pool of %d", pool), func(t *testing.T) { closingAfterNUnderLoad(t, pool) })
	}
}

func closingAfterNUnderLoad(t *testing.T, pool int) {
	srv := dnstest.New(t, dnstest.Options{})
	srv.Behavior.CloseAfter.Store(25)
	m := NewMetrics(prometheus.NewRegistry())
	d := newTestDoT(t, srv, func(o *DoTOptions) { o.Metrics, o.PoolSize = m, pool })
	g, err := NewGroup(testGroupOptions(GroupOptions{Upstreams: []Upstream{d}, Logger: testLogger(), Metrics: m}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })

	const n, conc = 5000, 128
	var next, failed atomic.Int64
	var first atomic.Pointer[error]
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for i := next.Add(1); i <= n; i = next.Add(1) {
				q := packQuery(t, fmt.Sprintf("q%d.example.", i), dns.TypeA)
				ctx, cancel := context.WithTimeout(context.Background(), answerTimeout)
				resp, err := g.Exchange(ctx, q)
				cancel()
				if err == nil {
					err = checkAnswer(resp, q)
				}
				if err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f != 0 {
		t.Fatalf("%d/%d queries failed; first: %v", f, n, *first.Load())
	}
	if got := d.budget.limit.Load(); got != 25 {
		t.Errorf("learned a limit of %d queries per connection, want 25", got)
	}
	// Once the limit is known every connection carries 25 queries: only
	// the few before, caught on connections the upstream closed, cost more.
	if got := srv.Accepted(); got > n/25+20 {
		t.Errorf("%d connections for %d queries; the limit was not kept to", got, n)
	}
	t.Logf("%d connections, %v queries resent", srv.Accepted(), counterValue(d.m.resent))
}

func TestConnBudget(t *testing.T) {
	var b connBudget
	for _, answers := range []uint64{10, 12, 10} {
		if b.closedUnderLoad(answers) {
			t.Fatalf("learned a limit from closes after %d answers, each unlike the one before", answers)
		}
	}
	if b.queries(time.Hour) != 0 {
		t.Fatal("a limit without two closes alike")
	}
	if !b.closedUnderLoad(10) || b.queries(time.Hour) != 10 {
		t.Fatalf("two closes after 10 answers: limit %d, want 10", b.queries(time.Hour))
	}
	if b.closedUnderLoad(10) {
		t.Error("learned again what was known")
	}
	// Forgotten after maxAge, and learned anew from two more closes.
	b.learnedAt.Store(time.Now().Add(-2 * time.Minute).UnixNano())
	if got := b.queries(time.Minute); got != 0 {
		t.Fatalf("limit %d kept past maxAge", got)
	}
	if b.closedUnderLoad(10) {
		t.Error("one close after forgetting taught the limit again")
	}
	if !b.closedUnderLoad(10) {
		t.Error("two closes after forgetting did not")
	}
}
