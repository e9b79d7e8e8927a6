package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// gate is a TCP relay on a fixed loopback port in front of a dnstest
// server. kill stops it the way a crashed upstream stops: the port refuses
// connections and every connection through it is reset. open listens on the
// same port again, as a restarted upstream would. The TLS session is
// end-to-end between the client and the dnstest server.
type gate struct {
	target string
	addr   netip.AddrPort

	mu    sync.Mutex
	ln    net.Listener // nil while killed
	conns map[*net.TCPConn]struct{}
	wg    sync.WaitGroup
}

func newGate(t testing.TB, target netip.AddrPort) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{
		target: target.String(),
		addr:   ln.Addr().(*net.TCPAddr).AddrPort(),
		conns:  make(map[*net.TCPConn]struct{}),
	}
	g.serve(ln)
	t.Cleanup(func() {
		g.kill()
		g.wg.Wait()
	})
	return g
}

func (g *gate) serve(ln net.Listener) {
	g.mu.Lock()
	g.ln = ln
	g.mu.Unlock()
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.wg.Add(1)
			go g.pipe(c.(*net.TCPConn))
		}
	}()
}

func (g *gate) pipe(c *net.TCPConn) {
	defer g.wg.Done()
	u, err := net.Dial("tcp", g.target)
	if err != nil {
		_ = c.Close()
		return
	}
	uc := u.(*net.TCPConn)
	g.mu.Lock()
	if g.ln == nil { // killed while this one was being accepted
		g.mu.Unlock()
		rstConn(c)
		rstConn(uc)
		return
	}
	g.conns[c], g.conns[uc] = struct{}{}, struct{}{}
	g.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(uc, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, uc); done <- struct{}{} }()
	<-done
	_ = c.Close()
	_ = uc.Close()
	<-done
	g.mu.Lock()
	delete(g.conns, c)
	delete(g.conns, uc)
	g.mu.Unlock()
}

func rstConn(c *net.TCPConn) {
	_ = c.SetLinger(0)
	_ = c.Close()
}

// kill closes the port and resets every connection through it.
func (g *gate) kill() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ln != nil {
		_ = g.ln.Close()
		g.ln = nil
	}
	for c := range g.conns {
		rstConn(c)
	}
}

// open listens on the gate's port again.
func (g *gate) open(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		ln, err := net.Listen("tcp", g.addr.String())
		if err == nil {
			g.serve(ln)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("listening on %s again: %v", g.addr, err)
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}

// rigUpstream is one member of a test Group: a dnstest server answering A
// queries with an address of its own, so an answer tells who gave it, behind
// a gate.
type rigUpstream struct {
	srv  *dnstest.Server
	gate *gate
	ip   netip.Addr
	d    *DoT

	silent    atomic.Bool  // read queries, answer none
	dropPct   atomic.Int32 // drop this share of queries (percent), at random
	rcode     atomic.Int32 // non-zero: answer with this rcode and no records
	nsQueries atomic.Int64 // "NS ." queries seen: the health probes
}

type rig struct {
	t   testing.TB
	g   *Group
	m   *Metrics
	ups []*rigUpstream
}

// handler answers like dnstest.DefaultHandler, with u's address in A
// records, unless u is told to be silent or to answer an error.
func (u *rigUpstream) handler(q *dns.Msg) *dns.Msg {
	if len(q.Question) == 1 && q.Question[0].Name == "." && q.Question[0].Qtype == dns.TypeNS {
		u.nsQueries.Add(1)
	}
	if u.silent.Load() {
		return nil
	}
	if p := u.dropPct.Load(); p > 0 && rand.IntN(100) < int(p) {
		return nil
	}
	r := dnstest.DefaultHandler(q)
	if rc := u.rcode.Load(); rc != 0 {
		r.Rcode = int(rc)
		r.Answer = nil
		return r
	}
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			a.A = u.ip.AsSlice()
		}
	}
	return r
}

// newRig starts n upstreams behind a Group built from opts (Upstreams,
// Logger and Metrics are filled in); dot adjusts each DoT's options.
func newRig(t testing.TB, n int, opts GroupOptions, dot func(i int, o *DoTOptions)) *rig {
	t.Helper()
	r := &rig{t: t, m: NewMetrics(prometheus.NewRegistry())}
	for i := range n {
		u := &rigUpstream{ip: netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)})}
		u.srv = dnstest.New(t, dnstest.Options{Handler: u.handler})
		u.gate = newGate(t, u.srv.Addr)
		u.d = newTestDoT(t, u.srv, func(o *DoTOptions) {
			o.Addr = u.gate.addr
			o.Metrics = r.m
			if dot != nil {
				dot(i, o)
			}
		})
		r.ups = append(r.ups, u)
		opts.Upstreams = append(opts.Upstreams, u.d)
	}
	opts.Logger, opts.Metrics = testLogger(), r.m
	g, err := NewGroup(testGroupOptions(opts))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	r.g = g
	return r
}

// query asks for name's A record through the Group and checks the answer
// belongs to the query. It returns the index of the upstream that answered
// (-1 for an answer without A record, such as SERVFAIL) and the rcode.
func (r *rig) query(ctx context.Context, name string) (who, rcode int, err error) {
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), dns.TypeA)
	b, err := q.Pack()
	if err != nil {
		return -1, 0, err
	}
	wire, err := dnswire.Parse(b)
	if err != nil {
		return -1, 0, err
	}
	resp, err := r.g.Exchange(ctx, wire)
	if err != nil {
		return -1, 0, err
	}
	m := new(dns.Msg)
	if err := m.Unpack(resp.Wire()); err != nil {
		return -1, 0, fmt.Errorf("unpacking answer: %w", err)
	}
	if m.Id != q.Id || len(m.Question) != 1 || m.Question[0] != q.Question[0] {
		return -1, 0, fmt.Errorf("answer %d %v does not match query %d %v", m.Id, m.Question, q.Id, q.Question)
	}
	if len(m.Answer) == 0 {
		return -1, m.Rcode, nil
	}
	a, ok := m.Answer[0].(*dns.A)
	if !ok || len(m.Answer) != 1 || a.Hdr.Name != q.Question[0].Name {
		return -1, m.Rcode, fmt.Errorf("unexpected answer %v", m.Answer)
	}
	for i, u := range r.ups {
		if a.A.Equal(u.ip.AsSlice()) {
			return i, m.Rcode, nil
		}
	}
	return -1, m.Rcode, fmt.Errorf("answer %s from no known upstream", a.A)
}

// mustQuery is query that fails the test unless upstream answered.
func (r *rig) mustQuery(timeout time.Duration, name string) int {
	r.t.Helper()
	who, _, err := r.query(ctxTimeout(r.t, timeout), name)
	if err != nil {
		r.t.Fatalf("query %s: %v", name, err)
	}
	if who < 0 {
		r.t.Fatalf("query %s: no address in the answer", name)
	}
	return who
}

func (r *rig) health(i int) float64 {
	return counterValue(r.m.HealthState.WithLabelValues(r.ups[i].d.Name()))
}

func (r *rig) counter(v *prometheus.CounterVec, i int) float64 {
	return counterValue(v.WithLabelValues(r.ups[i].d.Name()))
}

// driveDown sends queries until upstream i is marked down, failing the test
// if any query goes unanswered meanwhile (another upstream must take it) or
// if it takes longer than timeout.
func (r *rig) driveDown(i int, timeout time.Duration, wantAnswers bool) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for n := 0; !r.g.members[i].down.Load(); n++ {
		if time.Now().After(deadline) {
			r.t.Fatalf("upstream %d not marked down after %s", i, timeout)
		}
		_, _, err := r.query(ctxTimeout(r.t, answerTimeout), fmt.Sprintf("down%d.example.", n))
		if wantAnswers && err != nil {
			r.t.Fatalf("query while upstream %d goes down: %v", i, err)
		}
		if !wantAnswers && err == nil {
			r.t.Fatalf("query answered while every upstream is dying")
		}
	}
}

// One of two upstreams dies in the middle of a load: no query is lost and
// none gets a wrong answer; the dead one is marked down and probed, and the
// failovers and retries are counted.
func TestGroupKillOneUnderLoad(t *testing.T) {
	for _, policy := range []Policy{Sequential, RoundRobin, Random} {
		t.Run(policy.String(), func(t *testing.T) {
			r := newRig(t, 2, GroupOptions{Policy: policy, ProbeInterval: 100 * time.Millisecond}, nil)
			const total, workers, killAt = 2000, 16, 500
			var next, answered atomic.Int64
			killed := make(chan struct{})
			errs := make(chan error, workers)
			var wg sync.WaitGroup
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						n := next.Add(1)
						if n > total {
							return
						}
						ctx, cancel := context.WithTimeout(context.Background(), answerTimeout)
						who, _, err := r.query(ctx, fmt.Sprintf("load%d.example.", n))
						cancel()
						if err == nil && who < 0 {
							err = errors.New("answer without address")
						}
						if err != nil {
							errs <- fmt.Errorf("query %d: %w", n, err)
							return
						}
						if answered.Add(1) == killAt {
							r.ups[0].gate.kill()
							close(killed)
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			select {
			case <-killed:
			default:
				t.Fatal("the load ended before upstream 0 was killed")
			}
			if got := answered.Load(); got != total {
				t.Fatalf("%d/%d queries answered", got, total)
			}
			// Queries after the kill that went to upstream 0 failed over.
			if got := r.counter(r.m.Failovers, 0); got == 0 {
				t.Error("failovers_total{upstream 0} = 0 after it was killed under load")
			}
			if got := r.counter(r.m.Retries, 1); got == 0 {
				t.Error("retries_total{upstream 1} = 0; the failed queries were not retried there")
			}
			eventually(t, 2*time.Second, "upstream 0 to be marked down", func() bool { return r.health(0) == 0 })
			eventually(t, 2*time.Second, "a failed health probe", func() bool {
				return r.counter(r.m.HealthCheckFailures, 0) > 0
			})
			if r.health(1) != 1 {
				t.Error("the surviving upstream is not healthy")
			}
			t.Logf("failovers %v, retries %v, probes failed %v", r.counter(r.m.Failovers, 0),
				r.counter(r.m.Retries, 1), r.counter(r.m.HealthCheckFailures, 0))
		})
	}
}

// An upstream that accepts TCP and never answers the TLS handshake costs a
// query at most its deadline (about half of it, then the retry elsewhere
// answers), and once it is marked down, the next queries go straight to the
// healthy upstream.
func TestGroupBlackHole(t *testing.T) {
	r := newRig(t, 2, GroupOptions{Policy: Sequential, ProbeTimeout: 200 * time.Millisecond}, nil)
	r.ups[0].srv.Behavior.BlackHole.Store(true)
	const deadline = 2 * time.Second // half on the black hole, the rest for the retry on a loaded machine
	// Upstream 1 connected first: a retry there has what the black hole left
	// of the deadline, and a handshake on a loaded machine need not fit in.
	if _, err := r.ups[1].d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "warm.example.", dns.TypeA)); err != nil {
		t.Fatal(err)
	}

	for i := range 3 { // HEALTH_MAX_FAILS by default
		start := time.Now()
		if who := r.mustQuery(deadline, fmt.Sprintf("bh%d.example.", i)); who != 1 {
			t.Fatalf("query %d answered by upstream %d, want 1", i, who)
		}
		took := time.Since(start)
		t.Logf("query %d while upstream 0 is black-holed: %s", i, took.Round(time.Millisecond))
		if took > deadline {
			t.Errorf("query %d took %s, more than its deadline", i, took)
		}
		if took < deadline/3 {
			t.Errorf("query %d took %s; it never waited on the black hole", i, took)
		}
	}
	if r.health(0) != 0 {
		t.Fatal("upstream 0 not marked down after 3 timed-out attempts")
	}
	var slowest time.Duration
	for i := range 20 {
		start := time.Now()
		if who := r.mustQuery(deadline, fmt.Sprintf("after%d.example.", i)); who != 1 {
			t.Fatalf("answered by upstream %d, want 1", who)
		}
		slowest = max(slowest, time.Since(start))
	}
	// A query that tried upstream 0 would have waited half its deadline
	// there; failovers_total below counts such attempts exactly.
	if slowest >= deadline/2 {
		t.Errorf("slowest query after upstream 0 was marked down took %s; queries still wait on it", slowest)
	}
	if got := r.counter(r.m.Failovers, 0); got != 3 {
		t.Errorf("failovers_total{upstream 0} = %v, want 3", got)
	}
	if got := r.counter(r.m.Retries, 1); got != 3 {
		t.Errorf("retries_total{upstream 1} = %v, want 3", got)
	}
	eventually(t, 2*time.Second, "a failed health probe", func() bool {
		return r.counter(r.m.HealthCheckFailures, 0) > 0
	})
}

// Any DNS answer is final: SERVFAIL, REFUSED and NXDOMAIN are passed on, not
// retried, and the upstream stays healthy however many there are.
func TestGroupErrorAnswersAreFinal(t *testing.T) {
	for _, rc := range []int{dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeNameError} {
		t.Run(dns.RcodeToString[rc], func(t *testing.T) {
			r := newRig(t, 2, GroupOptions{Policy: Sequential, MaxFails: 1}, nil)
			r.ups[0].rcode.Store(int32(rc))
			const n = 20
			for i := range n {
				who, got, err := r.query(ctxTimeout(t, answerTimeout), fmt.Sprintf("broken%d.example.", i))
				if err != nil {
					t.Fatal(err)
				}
				if who != -1 || got != rc {
					t.Fatalf("query %d: rcode %s from upstream %d, want %s passed on", i, dns.RcodeToString[got], who, dns.RcodeToString[rc])
				}
			}
			if r.health(0) != 1 || !r.g.Healthy() || r.g.members[0].fails.Load() != 0 {
				t.Errorf("upstream 0 counted as failing after %s answers", dns.RcodeToString[rc])
			}
			if got := r.ups[0].srv.Queries(); got != n {
				t.Errorf("upstream 0 got %d queries, want %d (no retries)", got, n)
			}
			if got := r.ups[1].srv.Queries(); got != 0 {
				t.Errorf("upstream 1 got %d queries; an answer was retried", got)
			}
			if got := r.counter(r.m.Retries, 0) + r.counter(r.m.Retries, 1); got != 0 {
				t.Errorf("retries_total = %v, want 0", got)
			}
		})
	}
}

// Each policy spreads queries as documented, over healthy upstreams only.
func TestGroupPolicyDistribution(t *testing.T) {
	tests := []struct {
		policy Policy
		n      int
		down   int     // upstream killed and marked down first; -1 none
		want   [3]int  // expected share of n per upstream
		slack  float64 // allowed deviation, fraction of n
	}{
		{Sequential, 300, -1, [3]int{300, 0, 0}, 0},
		{Sequential, 300, 0, [3]int{0, 300, 0}, 0},
		{RoundRobin, 300, -1, [3]int{100, 100, 100}, 0},
		{RoundRobin, 300, 1, [3]int{150, 0, 150}, 0},
		{Random, 1500, -1, [3]int{500, 500, 500}, 0.1}, // ±150: 8 standard deviations
		{Random, 1000, 1, [3]int{500, 0, 500}, 0.1},    // ±100: 6 standard deviations
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/down=%d", tt.policy, tt.down), func(t *testing.T) {
			// MaxFails 3, not 1: a query starved past its deadline on a loaded
			// machine must not take an upstream out and skew the shares.
			r := newRig(t, 3, GroupOptions{Policy: tt.policy, MaxFails: 3}, nil)
			if tt.down >= 0 {
				r.ups[tt.down].gate.kill()
				r.driveDown(tt.down, 5*time.Second, true)
			}
			var got [3]int
			for i := range tt.n {
				got[r.mustQuery(answerTimeout, fmt.Sprintf("p%d.example.", i))]++
			}
			for i := range got {
				if d := got[i] - tt.want[i]; float64(max(d, -d)) > tt.slack*float64(tt.n) {
					t.Errorf("distribution %v, want %v (±%.0f)", got, tt.want, tt.slack*float64(tt.n))
					break
				}
			}
		})
	}
}

// Retries stop at MaxAttempts, and as soon as the next backoff would end
// past the query's deadline: the caller hears why now, not at the deadline.
func TestGroupRetryBounds(t *testing.T) {
	t.Run("attempts", func(t *testing.T) {
		r := newRig(t, 1, GroupOptions{MaxAttempts: 2, BaseDelay: time.Millisecond}, nil)
		r.ups[0].srv.Behavior.ResetAfter.Store(1)
		_, _, err := r.query(ctxTimeout(t, answerTimeout), "a.example.")
		if !errors.Is(err, ErrUnreachable) {
			t.Fatalf("error %v, want ErrUnreachable", err)
		}
		if got := r.counter(r.m.Retries, 0); got != 1 {
			t.Errorf("retries_total = %v, want 1 (2 attempts)", got)
		}
		// Each attempt is one DoT Exchange. In the first, the query is
		// resent once after its new connection is reset; in the second, the
		// third connection in a row reset makes the upstream unreachable.
		if got := r.ups[0].srv.Queries(); got != 3 {
			t.Errorf("server saw %d sends, want 3", got)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		// The first backoff (5s ±50%) ends past the 2s deadline: the query
		// fails with the refused dial at once, not at the deadline.
		r := newRig(t, 1, GroupOptions{MaxAttempts: 5, BaseDelay: 5 * time.Second, MaxFails: 100}, nil)
		r.ups[0].gate.kill()
		start := time.Now()
		_, _, err := r.query(ctxTimeout(t, 2*time.Second), "d.example.")
		took := time.Since(start)
		if !errors.Is(err, ErrUnreachable) {
			t.Fatalf("error %v, want ErrUnreachable", err)
		}
		if took > time.Second {
			t.Errorf("took %s; it waited for a backoff that could not end before the deadline", took)
		}
		if got := r.counter(r.m.Retries, 0); got != 0 {
			t.Errorf("retries_total = %v, want 0", got)
		}
	})
}

// An attempt the deadline cuts short learned nothing: the query fails with
// the deadline and with what the attempt before it found (which decides the
// Extended DNS Error), not with the deadline alone.
func TestGroupDeadlineKeepsLastError(t *testing.T) {
	r := newRig(t, 2, GroupOptions{Policy: Sequential, MaxAttempts: 2, BaseDelay: time.Millisecond, MaxFails: 100}, nil)
	r.ups[0].gate.kill()
	r.ups[1].silent.Store(true)
	ctx := newExpiringCtx()
	done := make(chan error, 1)
	go func() {
		_, _, err := r.query(ctx, "cut.example.")
		done <- err
	}()
	eventually(t, answerTimeout, "the retry to reach upstream 1", func() bool { return r.ups[1].srv.Queries() > 0 })
	ctx.expire()
	if err := <-done; !errors.Is(err, ErrUnreachable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v, want the deadline and upstream 0's ErrUnreachable", err)
	}
}

// Pooled connections that the upstream closes under queries after serving
// on them are not held against it, even at MaxFails 1: the queries are
// resent on fresh connections and answered by that same upstream.
func TestGroupConnClosedNotCounted(t *testing.T) {
	r := newRig(t, 2, GroupOptions{Policy: Sequential, MaxFails: 1}, nil)
	// Every connection answers two queries and is reset on reading the third.
	r.ups[0].srv.Behavior.ResetAfter.Store(3)
	for i := range 12 {
		if who := r.mustQuery(answerTimeout, fmt.Sprintf("c%d.example.", i)); who != 0 {
			t.Fatalf("answered by upstream %d, want 0", who)
		}
	}
	if r.health(0) != 1 || r.g.members[0].fails.Load() != 0 {
		t.Errorf("upstream 0 blamed for closed connections: health %v, fails %d", r.health(0), r.g.members[0].fails.Load())
	}
	if got := r.counter(r.m.RequestsResent, 0); got == 0 {
		t.Error("requests_resent_total = 0; the resets did not bite")
	}
	if got := r.counter(r.m.Failovers, 0); got != 0 {
		t.Errorf("failovers_total{upstream 0} = %v, want 0", got)
	}
}

// An upstream that completes the TLS handshake and then drops every
// connection before answering is failing: after the first two connections
// lost, whose query is resent once and then fails over without blame, each
// attempt (one connection, no dial loop) counts, and MaxFails of them mark
// it down; its queries are answered by the other upstream meanwhile.
func TestGroupUpstreamDroppingNewConnectionsMarkedDown(t *testing.T) {
	tests := []struct {
		name string
		set  func(b *dnstest.Behavior)
	}{
		{"hang up after the handshake", func(b *dnstest.Behavior) { b.HangUp.Store(true) }},
		{"reset on the first query", func(b *dnstest.Behavior) { b.ResetAfter.Store(1) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// No probe during the test: its dials would blur the count.
			r := newRig(t, 2, GroupOptions{Policy: Sequential, ProbeInterval: time.Hour}, nil)
			tt.set(&r.ups[0].srv.Behavior)
			for i := range 10 {
				if who := r.mustQuery(answerTimeout, fmt.Sprintf("d%d.example.", i)); who != 1 {
					t.Fatalf("query %d answered by upstream %d, want 1", i, who)
				}
			}
			if r.health(0) != 0 {
				t.Fatalf("upstream 0 still up after 10 queries; %d failures counted", r.g.members[0].fails.Load())
			}
			// The first query's two connections and one failover, then
			// HEALTH_MAX_FAILS attempts of one connection each. (A connection
			// hung up on before the pool published it leaves its query
			// waiting for the next dial instead: the first query then sees
			// all three connections of the run, and fails over once, counted.)
			if got := r.counter(r.m.Failovers, 0); got != 1+3 && got != 3 {
				t.Errorf("failovers_total{upstream 0} = %v, want 4 (or 3)", got)
			}
			if got := r.ups[0].srv.Accepted(); got != 2+3 {
				t.Errorf("upstream 0 accepted %d connections, want 5", got)
			}
		})
	}
}

func TestNewGroupValidates(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	d := newTestDoT(t, srv, nil)
	m := NewMetrics(prometheus.NewRegistry())
	tests := map[string]func(*GroupOptions){
		"no upstreams":      func(o *GroupOptions) { o.Upstreams = nil },
		"no logger":         func(o *GroupOptions) { o.Logger = nil },
		"no metrics":        func(o *GroupOptions) { o.Metrics = nil },
		"listed twice":      func(o *GroupOptions) { o.Upstreams = []Upstream{d, d} },
		"negative retries":  func(o *GroupOptions) { o.MaxAttempts = -1 },
		"no attempts":       func(o *GroupOptions) { o.MaxAttempts = 0 },
		"no base delay":     func(o *GroupOptions) { o.BaseDelay = 0 },
		"no max fails":      func(o *GroupOptions) { o.MaxFails = 0 },
		"no probe interval": func(o *GroupOptions) { o.ProbeInterval = 0 },
		"no probe timeout":  func(o *GroupOptions) { o.ProbeTimeout = 0 },
	}
	for name, mod := range tests {
		opts := testGroupOptions(GroupOptions{Upstreams: []Upstream{d}, Logger: testLogger(), Metrics: m})
		mod(&opts)
		if g, err := NewGroup(opts); err == nil {
			_ = g.Close()
			t.Errorf("%s: NewGroup accepted %+v", name, opts)
		}
	}
	g, err := NewGroup(testGroupOptions(GroupOptions{Upstreams: []Upstream{d}, Logger: testLogger(), Metrics: m}))
	if err != nil {
		t.Fatalf("valid options refused: %v", err)
	}
	_ = g.Close()
}

// An answer to the query that does not parse is the upstream's answer all
// the same, as when the server found it malformed: the query fails with
// ErrBadResponse at once, is not retried elsewhere, and does not count
// against the upstream. It is no mismatch either: it answered the query.
func TestGroupMalformedAnswerIsFinal(t *testing.T) {
	cut := func(dst, q []byte) []byte {
		out := dnstest.ReflectRaw(dst, q)
		return out[:len(out)-2] // the A record's data cut short
	}
	r := newRig(t, 2, GroupOptions{Policy: Sequential, MaxFails: 1}, nil)
	bad := dnstest.New(t, dnstest.Options{Raw: cut})
	d := newTestDoT(t, bad, func(o *DoTOptions) { o.Metrics = r.m })
	g, err := NewGroup(testGroupOptions(GroupOptions{Upstreams: []Upstream{d, r.ups[1].d}, MaxFails: 1, Logger: testLogger(), Metrics: r.m}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	const n = 5
	for i := range n {
		q := packQuery(t, fmt.Sprintf("cut%d.example.", i), dns.TypeA)
		if _, err := g.Exchange(ctxTimeout(t, answerTimeout), q); !errors.Is(err, ErrBadResponse) || !errors.Is(err, dnswire.ErrTruncated) {
			t.Fatalf("query %d: %v, want ErrBadResponse for a record cut short", i, err)
		}
	}
	if !g.Healthy() || g.members[0].down.Load() || g.members[0].fails.Load() != 0 {
		t.Errorf("the upstream was counted as failing for malformed answers")
	}
	if got := r.ups[1].srv.Queries(); got != 0 {
		t.Errorf("the other upstream got %d queries; a malformed answer was retried", got)
	}
	if got := counterValue(d.m.mismatched); got != 0 {
		t.Errorf("mismatched_responses_total = %v, want 0", got)
	}
	if got := bad.Queries(); got != n {
		t.Errorf("upstream got %d queries, want %d (no resends)", got, n)
	}
}

// Queries whose deadline comes while they wait for room on connections
// full of other queries (names the upstream is slow to answer) fail with
// ErrBusy, and that is not held against the upstream: the limit is the
// sidecar's own, and the upstream answers everything else.
func TestGroupFullConnectionsNotCounted(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) { testGroupFullConnectionsNotCounted(t, tr) })
	}
}

func testGroupFullConnectionsNotCounted(t *testing.T, transport string) {
	srv := newTestServer(t, transport, dnstest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		if strings.HasPrefix(q.Question[0].Name, "slow") {
			return nil
		}
		return dnstest.DefaultHandler(q)
	}})
	m := NewMetrics(prometheus.NewRegistry())
	d := newTestUpstream(t, srv, func(o *DoTOptions) { o.PoolSize, o.MaxInFlightPerConn, o.Metrics = 1, 2, m })
	g, err := NewGroup(testGroupOptions(GroupOptions{Upstreams: []Upstream{d}, MaxFails: 1, Logger: testLogger(), Metrics: m}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	ask := func(ctx context.Context, name string) error {
		_, err := g.Exchange(ctx, packQuery(t, name, dns.TypeA))
		return err
	}
	if err := ask(context.Background(), "first.example."); err != nil {
		t.Fatal(err)
	}
	slowCtx, cancelSlow := context.WithCancel(context.Background())
	var slow sync.WaitGroup
	for i := range 2 {
		slow.Go(func() { _ = ask(slowCtx, fmt.Sprintf("slow%d.example.", i)) })
	}
	defer slow.Wait()
	defer cancelSlow()
	eventually(t, answerTimeout, "the slow queries to fill the connection", func() bool { return !d.hasRoom() })
	for i := range 3 {
		// Long enough to be judged (minJudgedBudget).
		ctx, cancel := context.WithTimeout(context.Background(), 4*minJudgedBudget)
		err := ask(ctx, fmt.Sprintf("q%d.example.", i))
		cancel()
		if !errors.Is(err, ErrBusy) {
			t.Fatalf("query %d beside a full connection: %v, want ErrBusy", i, err)
		}
	}
	if fails := g.members[0].fails.Load(); fails != 0 || g.members[0].down.Load() {
		t.Fatalf("upstream blamed for the sidecar's full connections: %d failures, down %v", fails, g.members[0].down.Load())
	}
	if got := testutil.ToFloat64(m.MarkedDown.WithLabelValues(d.Name())); got != 0 {
		t.Errorf("marked_down_total = %v, want 0", got)
	}
}
