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

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// runQueries sends n distinct A queries from conc goroutines and returns the
// first error (a failed Exchange or a wrong answer) and how many succeeded.
func runQueries(t testing.TB, d Upstream, n, conc int, timeout time.Duration) (ok int64, err error) {
	t.Helper()
	var (
		next    atomic.Int64
		good    atomic.Int64
		errOnce sync.Once
		first   error
		wg      sync.WaitGroup
	)
	for range conc {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				q := packQuery(t, fmt.Sprintf("q%d.example.", i), dns.TypeA)
				ctx, cancel := context.WithTimeout(context.Background(), timeout)
				resp, err := d.Exchange(ctx, q)
				cancel()
				if err == nil {
					err = checkAnswer(resp, q)
				}
				if err != nil {
					errOnce.Do(func() { first = fmt.Errorf("query %d: %w", i, err) })
					continue
				}
				good.Add(1)
			}
		})
	}
	wg.Wait()
	return good.Load(), first
}

func TestPipelinedAnsweredInReverseOrder(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	srv.Behavior.ReverseBatch.Store(100)
	d := newTestDoT(t, srv, func(o *DoTOptions) { o.PoolSize = 1 })
	// The server answers nothing until it holds 100 queries, so all 100 are
	// in flight on one connection at once, and come back last first.
	ok, err := runQueries(t, d, 100, 100, answerTimeout)
	if err != nil || ok != 100 {
		t.Fatalf("%d/100 answered right; first error: %v", ok, err)
	}
	if got := srv.Accepted(); got != 1 {
		t.Errorf("server accepted %d connections, want 1", got)
	}
	if got := srv.MaxOutstanding(); got != 100 {
		t.Errorf("server saw up to %d queries outstanding, want all 100", got)
	}
	if got := counterValue(d.m.mismatched); got != 0 {
		t.Errorf("mismatched responses = %v, want 0", got)
	}
}

func TestSplitReads(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	srv.Behavior.SplitWrites.Store(true)
	d := newTestDoT(t, srv, nil)
	ok, err := runQueries(t, d, 200, 20, answerTimeout)
	if err != nil || ok != 200 {
		t.Fatalf("%d/200 answered right; first error: %v", ok, err)
	}
}

func TestPoolStaysWithinSizeUnderLoad(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			for _, size := range []int{1, 3} {
				t.Run(fmt.Sprintf("PoolSize=%d", size), func(t *testing.T) {
					srv := newTestServer(t, tr, dnstest.Options{Raw: dnstest.ReflectRaw})
					// A handshake starved of CPU on a loaded machine must not time
					// out: a failed dial is one more connection for the server to
					// count, though never more than PoolSize at once.
					d := newTestUpstream(t, srv, func(o *DoTOptions) { o.PoolSize = size; o.DialTimeout = 10 * time.Second })
					// Each query waits behind up to 255 others on as few as one
					// connection: under -race on a loaded machine the slowest
					// took 6 s of the 10 of answerTimeout. The deadline only
					// bounds a lost answer.
					ok, err := runQueries(t, d, 10000, 256, 3*answerTimeout)
					if err != nil || ok != 10000 {
						t.Fatalf("%d/10000 answered right; first error: %v", ok, err)
					}
					if got := srv.Accepted(); got > int64(size) || got < 1 {
						t.Errorf("server accepted %d connections, want 1..%d", got, size)
					}
					eventually(t, 2*time.Second, "pool bookkeeping to settle", func() bool { return d.consistent() })
					t.Logf("PoolSize %d: %d connections for 10000 queries from 256 goroutines", size, srv.Accepted())
				})
			}
		})
	}
}

// A burst of queries with no connection open shares the one dial in
// progress rather than each dialing: against a server that never completes
// the handshake, 50 queries make one TCP connection, and all fail as
// unreachable once DialTimeout passes. DialTimeout leaves every goroutine
// ample time to join the dial on a loaded machine.
func TestBurstSharesOneDial(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			srv := newTestServer(t, tr, dnstest.Options{})
			srv.Behavior.BlackHole.Store(true)
			d := newTestUpstream(t, srv, func(o *DoTOptions) { o.PoolSize = 4; o.DialTimeout = time.Second })
			start := make(chan struct{})
			errs := make(chan error, 50)
			var wg sync.WaitGroup
			for i := range 50 {
				wg.Go(func() {
					<-start
					q := packQuery(t, fmt.Sprintf("b%d.example.", i), dns.TypeA)
					_, err := d.Exchange(ctxTimeout(t, 5*time.Second), q)
					errs <- err
				})
			}
			close(start)
			wg.Wait()
			close(errs)
			for err := range errs {
				if !errors.Is(err, ErrUnreachable) {
					t.Errorf("Exchange error %v, want ErrUnreachable", err)
				}
			}
			if got := srv.Accepted(); got != 1 {
				t.Errorf("server accepted %d connections, want 1 (one shared dial)", got)
			}
		})
	}
}

// With a low per-connection cap, queries beyond it wait for room rather than
// fail or open connections past the pool. The server holds its answers until
// it has read 4 queries, so the cap is reached whatever the scheduling; the
// delay on top gives a client over the cap time to show it.
func TestMaxInFlightPerConn(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	srv.Behavior.ReverseBatch.Store(4)
	srv.Behavior.SetDelay(20 * time.Millisecond)
	d := newTestDoT(t, srv, func(o *DoTOptions) { o.PoolSize = 1; o.MaxInFlightPerConn = 4 })
	ok, err := runQueries(t, d, 40, 20, answerTimeout)
	if err != nil || ok != 40 {
		t.Fatalf("%d/40 answered right; first error: %v", ok, err)
	}
	if got := srv.Accepted(); got != 1 {
		t.Errorf("server accepted %d connections, want 1", got)
	}
	if got := srv.MaxOutstanding(); got != 4 {
		t.Errorf("server saw up to %d queries outstanding on the connection, want 4", got)
	}
}

// The answer to a query given up on may still arrive. It must not reach a
// later query that drew the same upstream ID and asks the same question:
// it was made for another client's message (here another EDNS buffer size;
// in life other DO, CD, cookie or client-subnet options). IDs of abandoned
// queries stay out of use for a while.
func TestLateAnswerNotDeliveredToReusedID(t *testing.T) {
	ids := make(chan uint16, 16)
	srv := dnstest.New(t, dnstest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		ids <- q.Id
		return dnstest.DefaultHandler(q)
	}})
	srv.Behavior.SetDelay(300 * time.Millisecond)
	d := newTestDoT(t, srv, func(o *DoTOptions) { o.PoolSize = 1 })
	query := func(size uint16) dnswire.Msg {
		q := new(dns.Msg)
		q.SetQuestion("late.example.", dns.TypeA)
		q.SetEdns0(size, false)
		return parseMsg(t, q)
	}

	// A is sent, then given up on before its answer comes.
	ctx := newExpiringCtx()
	errc := make(chan error, 1)
	go func() {
		_, err := d.Exchange(ctx, query(1232))
		errc <- err
	}()
	idA := <-ids
	ctx.expire()
	if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("query A: %v, want DeadlineExceeded", err)
	}
	// Make A's ID the next ones the connection draws, as chance may.
	c := d.activeConns()[0]
	c.mu.Lock()
	c.idBits, c.idLeft = uint64(idA)*0x0001_0001_0001_0001, 4
	c.mu.Unlock()

	// B asks the same question with another buffer size and is in flight
	// when A's late answer arrives.
	resp, err := d.Exchange(ctxTimeout(t, answerTimeout), query(4096))
	if err != nil {
		t.Fatalf("query B: %v", err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(resp.Wire()); err != nil {
		t.Fatal(err)
	}
	if opt := r.IsEdns0(); opt == nil || opt.UDPSize() != 4096 {
		t.Errorf("query B got the answer made for query A (OPT %v)", opt)
	}
	if idB := <-ids; idB == idA {
		t.Errorf("query B went out with abandoned query A's ID %d", idA)
	}
	eventually(t, 2*time.Second, "A's late answer to be dropped", func() bool { return counterValue(d.m.mismatched) == 1 })
}

func TestIDQuarantineForgetsOldestFirst(t *testing.T) {
	var q idQuarantine
	for i := range quarantineLen + 10 {
		q.add(uint16(i * 7))
	}
	for i := range quarantineLen + 10 {
		if got, want := q.has(uint16(i*7)), i >= 10; got != want {
			t.Fatalf("has(%d) = %v, want %v", i*7, got, want)
		}
	}
}
