package upstream

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// testPlainOptions are the options of a test Plain toward srv (when not
// nil).
func testPlainOptions(srv *dnstest.PlainServer, tcpOnly bool) PlainOptions {
	var addr netip.AddrPort
	if srv != nil {
		addr = srv.Addr
	}
	return PlainOptions{
		Addr:         addr,
		TCPOnly:      tcpOnly,
		DialTimeout:  2 * time.Second,
		QueryTimeout: 2 * time.Second,
		Logger:       testLogger(),
		Metrics:      NewMetrics(prometheus.NewRegistry()).ForRoute("cluster.local"),
	}
}

func newTestPlain(t testing.TB, srv *dnstest.PlainServer, tcpOnly bool, mod func(*PlainOptions)) *Plain {
	t.Helper()
	opts := testPlainOptions(srv, tcpOnly)
	if mod != nil {
		mod(&opts)
	}
	p, err := NewPlain(opts)
	if err != nil {
		t.Fatalf("NewPlain: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// Over UDP, every query leaves from a socket of its own: a new source port
// each time, and the client's ID back on the answer.
func TestPlainUDPFreshPortPerQuery(t *testing.T) {
	srv := dnstest.NewPlain(t, dnstest.PlainOptions{})
	p := newTestPlain(t, srv, false, nil)
	if p.Name() != "dns://"+srv.Addr.String() {
		t.Errorf("Name() = %q", p.Name())
	}
	const n = 20
	for i := range n {
		q := packQuery(t, "kubernetes.default.svc.cluster.local.", dns.TypeA)
		ans, err := p.Exchange(ctxTimeout(t, answerTimeout), q)
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		if err := checkAnswer(ans, q); err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
	}
	ports := map[uint16]bool{}
	for _, q := range srv.Queries() {
		if q.Proto != "udp" {
			t.Fatalf("query over %s, want udp", q.Proto)
		}
		ports[q.From.Port()] = true
	}
	// A port may come back by chance; Linux draws from tens of thousands.
	if len(ports) < n-1 {
		t.Errorf("%d queries came from %d source ports, want a new one each", n, len(ports))
	}
}

// An answer from another port, or with another ID, is not the answer: the
// client keeps waiting, and takes the real one.
func TestPlainUDPIgnoresSpoofedAnswers(t *testing.T) {
	srv := dnstest.NewPlain(t, dnstest.PlainOptions{})
	srv.Behavior.Spoof.Store(true)
	p := newTestPlain(t, srv, false, nil)
	for range 5 {
		q := packQuery(t, "kubernetes.default.svc.cluster.local.", dns.TypeA)
		ans, err := p.Exchange(ctxTimeout(t, answerTimeout), q)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkAnswer(ans, q); err != nil {
			t.Fatalf("took a decoy: %v", err)
		}
	}
	// The wrong-ID decoys reached the socket and were dropped; those from
	// another port never got past the kernel.
	if got := counterValue(p.m.mismatched); got != 5 {
		t.Errorf("mismatched_responses_total = %v, want 5", got)
	}
}

// A truncated UDP answer is asked again over TCP.
func TestPlainUDPTruncatedRetriedOverTCP(t *testing.T) {
	srv := dnstest.NewPlain(t, dnstest.PlainOptions{})
	srv.Behavior.Truncate.Store(true)
	p := newTestPlain(t, srv, false, nil)
	q := packQuery(t, "big.cluster.local.", dns.TypeA)
	ans, err := p.Exchange(ctxTimeout(t, answerTimeout), q)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkAnswer(ans, q); err != nil || ans.Truncated() {
		t.Fatalf("answer %v, TC %v", err, ans.Truncated())
	}
	var protos []string
	for _, q := range srv.Queries() {
		protos = append(protos, q.Proto)
	}
	if strings.Join(protos, ",") != "udp,tcp" {
		t.Errorf("server saw %v, want udp then tcp", protos)
	}
}

// tcp:// sends every query over TCP, one at a time per connection, and
// reuses connections: queries one after the other share one.
func TestPlainTCPReusesConnections(t *testing.T) {
	srv := dnstest.NewPlain(t, dnstest.PlainOptions{})
	p := newTestPlain(t, srv, true, nil)
	if p.Name() != "tcp://"+srv.Addr.String() {
		t.Errorf("Name() = %q", p.Name())
	}
	for range 10 {
		q := packQuery(t, "a.cluster.local.", dns.TypeA)
		ans, err := p.Exchange(ctxTimeout(t, answerTimeout), q)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkAnswer(ans, q); err != nil {
			t.Fatal(err)
		}
	}
	from := map[string]bool{}
	for _, q := range srv.Queries() {
		if q.Proto != "tcp" {
			t.Fatalf("query over %s", q.Proto)
		}
		from[q.From.String()] = true
	}
	if len(from) != 1 || counterValue(p.m.opened) != 1 || counterValue(p.m.open) != 1 {
		t.Errorf("10 queries in turn used %d connections (opened %v, open %v), want 1",
			len(from), counterValue(p.m.opened), counterValue(p.m.open))
	}

	if got := counterValue(p.m.open); got != 1 {
		t.Errorf("connections_open = %v, want 1", got)
	}
}

// Queries at once each get a connection of their own: none waits behind
// another's slow answer. The resolver here answers none until all have
// arrived, which one connection carrying them in turn would never do. At
// most tcpMaxIdle stay open afterwards.
func TestPlainTCPConnectionPerQueryInFlight(t *testing.T) {
	const n = 3 * tcpMaxIdle
	var arrived sync.WaitGroup
	arrived.Add(n)
	srv := dnstest.NewPlain(t, dnstest.PlainOptions{Handler: func(q *dns.Msg) *dns.Msg {
		arrived.Done()
		arrived.Wait()
		return dnstest.DefaultHandler(q)
	}})
	p := newTestPlain(t, srv, true, nil)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			q := packQuery(t, "b.cluster.local.", dns.TypeA)
			ans, err := p.Exchange(ctxTimeout(t, answerTimeout), q)
			if err == nil {
				err = checkAnswer(ans, q)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := counterValue(p.m.opened); got != n {
		t.Errorf("connections_opened_total = %v for %d queries at once, want %d", got, n, n)
	}
	if got := counterValue(p.m.open); got != tcpMaxIdle {
		t.Errorf("connections_open = %v after the burst, want %d kept", got, tcpMaxIdle)
	}
}

// A pooled connection the resolver closed meanwhile (restart, idle timeout)
// costs a resend on a new one, and no error.
func TestPlainTCPPooledConnectionClosed(t *testing.T) {
	srv := dnstest.NewPlain(t, dnstest.PlainOptions{})
	p := newTestPlain(t, srv, true, nil)
	q := packQuery(t, "a.cluster.local.", dns.TypeA)
	if _, err := p.Exchange(ctxTimeout(t, answerTimeout), q); err != nil {
		t.Fatal(err)
	}
	srv.Stop() // closes the connection the pool keeps
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	ans, err := p.Exchange(ctxTimeout(t, answerTimeout), q)
	if err != nil {
		t.Fatalf("after the resolver closed the pooled connection: %v", err)
	}
	if err := checkAnswer(ans, q); err != nil {
		t.Fatal(err)
	}
	if got := counterValue(p.m.resent); got != 1 {
		t.Errorf("requests_resent_total = %v, want 1", got)
	}
}

// A resolver that is down fails queries at once as unreachable, over UDP
// (ICMP port unreachable) and TCP (connection refused), well before the
// deadline.
func TestPlainDown(t *testing.T) {
	for _, tcpOnly := range []bool{false, true} {
		t.Run(map[bool]string{false: "dns", true: "tcp"}[tcpOnly], func(t *testing.T) {
			srv := dnstest.NewPlain(t, dnstest.PlainOptions{})
			p := newTestPlain(t, srv, tcpOnly, nil)
			srv.Stop()
			start := time.Now()
			_, err := p.Exchange(ctxTimeout(t, 5*time.Second), packQuery(t, "a.cluster.local.", dns.TypeA))
			if !errors.Is(err, ErrUnreachable) {
				t.Fatalf("error %v, want ErrUnreachable", err)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("took %v to notice", took)
			}
		})
	}
}

// A resolver that answers nothing times out; one that answers other queries
// meanwhile is slow on this name (ErrSlowAnswer, which a Group does not hold
// against it).
func TestPlainTimeouts(t *testing.T) {
	slowName := "slow.ec2.internal."
	answered := make(chan struct{}, 16)
	srv := dnstest.NewPlain(t, dnstest.PlainOptions{Handler: func(q *dns.Msg) *dns.Msg {
		if q.Question[0].Name == slowName {
			return nil
		}
		defer func() { answered <- struct{}{} }()
		return dnstest.DefaultHandler(q)
	}})
	for _, tcpOnly := range []bool{false, true} {
		t.Run(map[bool]string{false: "dns", true: "tcp"}[tcpOnly], func(t *testing.T) {
			p := newTestPlain(t, srv, tcpOnly, nil)
			ctx := newExpiringCtx()
			done := make(chan error, 1)
			go func() {
				_, err := p.Exchange(ctx, packQuery(t, slowName, dns.TypeA))
				done <- err
			}()
			eventually(t, answerTimeout, "the slow query to arrive", func() bool {
				for _, q := range srv.Queries() {
					if q.Name == slowName && (q.Proto == "tcp") == tcpOnly {
						return true
					}
				}
				return false
			})
			if _, err := p.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "fast.cluster.local.", dns.TypeA)); err != nil {
				t.Fatal(err)
			}
			ctx.expire()
			if err := <-done; !errors.Is(err, ErrSlowAnswer) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("slow name: %v, want ErrSlowAnswer and the deadline", err)
			}

			// Nothing answered meanwhile: a plain timeout.
			ctx = newExpiringCtx()
			n := len(srv.Queries())
			go func() {
				_, err := p.Exchange(ctx, packQuery(t, slowName, dns.TypeA))
				done <- err
			}()
			eventually(t, answerTimeout, "the query to arrive", func() bool { return len(srv.Queries()) > n })
			ctx.expire()
			if err := <-done; errors.Is(err, ErrSlowAnswer) || !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("silent resolver: %v, want the deadline alone", err)
			}
		})
	}
}

// Close ends a query in flight with ErrClosed, and later ones at once.
func TestPlainClose(t *testing.T) {
	srv := dnstest.NewPlain(t, dnstest.PlainOptions{})
	srv.Behavior.Drop.Store(true)
	for _, tcpOnly := range []bool{false, true} {
		p := newTestPlain(t, srv, tcpOnly, nil)
		done := make(chan error, 1)
		n := len(srv.Queries())
		go func() {
			_, err := p.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "a.cluster.local.", dns.TypeA))
			done <- err
		}()
		eventually(t, answerTimeout, "the query to arrive", func() bool { return len(srv.Queries()) > n })
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Errorf("in flight at Close: %v, want ErrClosed", err)
		}
		if _, err := p.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "a.cluster.local.", dns.TypeA)); !errors.Is(err, ErrClosed) {
			t.Errorf("after Close: %v, want ErrClosed", err)
		}
		if got := counterValue(p.m.open); got != 0 {
			t.Errorf("connections_open = %v after Close", got)
		}
	}
}

func TestNewPlainRefusesBadOptions(t *testing.T) {
	srv := dnstest.NewPlain(t, dnstest.PlainOptions{})
	for name, mod := range map[string]func(*PlainOptions){
		"no address":    func(o *PlainOptions) { o.Addr = netip.AddrPortFrom(o.Addr.Addr(), 0) },
		"no logger":     func(o *PlainOptions) { o.Logger = nil },
		"no metrics":    func(o *PlainOptions) { o.Metrics = nil },
		"no timeout":    func(o *PlainOptions) { o.QueryTimeout = 0 },
		"no dial limit": func(o *PlainOptions) { o.DialTimeout = 0 },
	} {
		opts := testPlainOptions(srv, false)
		mod(&opts)
		if p, err := NewPlain(opts); err == nil {
			p.Close()
			t.Errorf("%s: accepted", name)
		}
	}
}
