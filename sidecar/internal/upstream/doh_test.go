package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// Queries go as RFC 8484 asks: ID 0 on the wire, POST with
// application/dns-message or GET with ?dns= in unpadded base64url (the
// server refuses anything else), the certificate's name as SNI and as
// :authority; the client's ID comes back on the answer.
func TestDoHExchangeBasic(t *testing.T) {
	for _, get := range []bool{false, true} {
		t.Run(map[bool]string{false: "POST", true: "GET"}[get], func(t *testing.T) {
			var wireIDs idLog
			srv, d := newTestDoH(t, dnstest.Options{Handler: func(q *dns.Msg) *dns.Msg {
				wireIDs.add(q.Id)
				return dnstest.DefaultHandler(q)
			}}, func(o *DoHOptions) { o.GET = get })
			if got, want := d.Name(), "https://"+srv.Addr.String()+"/dns-query#dns.test"; got != want {
				t.Errorf("Name() = %q, want %q", got, want)
			}
			q := new(dns.Msg)
			q.SetQuestion("Example.COM.", dns.TypeA)
			q.SetEdns0(1232, true)
			query := parseMsg(t, q)
			for range 3 {
				resp, err := d.Exchange(ctxTimeout(t, answerTimeout), query)
				if err != nil {
					t.Fatalf("Exchange: %v", err)
				}
				if err := checkAnswer(resp, query); err != nil {
					t.Fatal(err)
				}
			}
			if ids := wireIDs.all(); len(ids) != 3 || ids[0] != 0 || ids[1] != 0 || ids[2] != 0 {
				t.Errorf("IDs on the wire %v, want 0 each time", ids)
			}
			if srv.Accepted() != 1 || srv.Queries() != 3 {
				t.Errorf("accepted %d connections, %d queries; want 1 and 3", srv.Accepted(), srv.Queries())
			}
			if a := srv.Authorities(); len(a) != 1 || a[0] != "dns.test:"+itoa(srv.Addr.Port()) {
				t.Errorf(":authority %v, want the server name and port", a)
			}
			if s := srv.SNIs(); len(s) != 1 || s[0] != "dns.test" {
				t.Errorf("SNI %v", s)
			}
			if got := counterValue(d.m.opened); got != 1 {
				t.Errorf("connections_opened_total = %v, want 1", got)
			}
		})
	}
}

// idLog collects message IDs from the server's handler goroutines.
type idLog struct {
	mu  sync.Mutex
	ids []uint16
}

func (l *idLog) add(id uint16) {
	l.mu.Lock()
	l.ids = append(l.ids, id)
	l.mu.Unlock()
}

func (l *idLog) all() []uint16 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]uint16(nil), l.ids...)
}

func TestAuthority(t *testing.T) {
	for _, tt := range []struct {
		name string
		port uint16
		want string
	}{
		{"dns.example", 443, "dns.example"},
		{"dns.example", 8443, "dns.example:8443"},
		{"192.0.2.1", 443, "192.0.2.1"},
		{"2001:db8::1", 443, "[2001:db8::1]"},
		{"2001:db8::1", 8443, "[2001:db8::1]:8443"},
	} {
		if got := authority(tt.name, tt.port); got != tt.want {
			t.Errorf("authority(%q, %d) = %q, want %q", tt.name, tt.port, got, tt.want)
		}
	}
}

// An HTTP response without a usable answer is ErrHTTP at once, counted by
// reason, never handed over as an answer, and not a reason to drop the
// connection (the next query is answered on it).
func TestDoHBadResponses(t *testing.T) {
	tests := []struct {
		name       string
		set        func(b *dnstest.Behavior)
		path       string // the client's, when not the server's
		reason     string
		mismatched bool
	}{
		{"503", func(b *dnstest.Behavior) { b.Status.Store(503) }, "", httpStatus, false},
		{"wrong path: 404", nil, "/resolve", httpStatus, false},
		{"wrong content type", func(b *dnstest.Behavior) { b.SetContentType("text/html") }, "", httpContentType, false},
		{"no content type", func(b *dnstest.Behavior) { b.SetContentType("") }, "", httpContentType, false},
		{"truncated body", func(b *dnstest.Behavior) { b.TruncateBody.Store(true) }, "", httpBody, false},
		{"oversized body", func(b *dnstest.Behavior) { b.OversizeBody.Store(true) }, "", httpBody, false},
		{"stream reset", func(b *dnstest.Behavior) { b.ResetStream.Store(true) }, "", httpStreamReset, false},
		{"answer to another question", func(b *dnstest.Behavior) { b.SetMangle(dnstest.MangleQuestion, false) }, "", httpQuestion, true},
		{"answer with another ID", func(b *dnstest.Behavior) { b.SetMangle(dnstest.MangleID, false) }, "", httpQuestion, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, d := newTestDoH(t, dnstest.Options{}, func(o *DoHOptions) {
				if tt.path != "" {
					o.Path = tt.path
				}
			})
			if tt.path == "" {
				if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "warm.example.", dns.TypeA)); err != nil {
					t.Fatal(err)
				}
			}
			if tt.set != nil {
				tt.set(&srv.Behavior)
			}
			start := time.Now()
			resp, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "bad.example.", dns.TypeA))
			if !errors.Is(err, ErrHTTP) || errors.Is(err, ErrBadResponse) || errors.Is(err, ErrConnClosed) || resp.Wire() != nil {
				t.Fatalf("Exchange: %d bytes, %v; want ErrHTTP alone", len(resp.Wire()), err)
			}
			if took := time.Since(start); took > answerTimeout/2 {
				t.Errorf("the failure took %s: it waited for a timeout", took)
			}
			for _, r := range httpReasons {
				want := 0.0
				if r == tt.reason {
					want = 1
				}
				if got := counterValue(d.m.httpErrs[r]); got != want {
					t.Errorf("http_errors_total{reason=%q} = %v, want %v", r, got, want)
				}
			}
			if got := counterValue(d.m.mismatched) == 1; got != tt.mismatched {
				t.Errorf("mismatched_responses_total counted: %v, want %v", got, tt.mismatched)
			}
			if tt.path != "" {
				return
			}
			srv.Behavior.Reset()
			q := packQuery(t, "good.example.", dns.TypeA)
			resp, err = d.Exchange(ctxTimeout(t, answerTimeout), q)
			if err == nil {
				err = checkAnswer(resp, q)
			}
			if err != nil {
				t.Fatalf("query once the server behaves: %v", err)
			}
			if srv.Accepted() != 1 {
				t.Errorf("server accepted %d connections, want 1 (kept)", srv.Accepted())
			}
		})
	}
}

// A server that does not speak HTTP/2 (ALPN without h2) is a TLS failure:
// no query goes out over HTTP/1.1 or anything else.
func TestDoHWithoutHTTP2(t *testing.T) {
	srv, d := newTestDoH(t, dnstest.Options{}, nil)
	srv.Behavior.NoH2.Store(true)
	_, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "h.example.", dns.TypeA))
	if !errors.Is(err, ErrTLS) {
		t.Fatalf("Exchange: %v, want ErrTLS", err)
	}
	if srv.Queries() != 0 {
		t.Errorf("server read %d queries", srv.Queries())
	}
	if got := counterValue(d.m.hsFailures); got != 1 {
		t.Errorf("tls_handshake_failures_total = %v, want 1", got)
	}
	if got := counterValue(d.m.open); got != 0 {
		t.Errorf("connections_open = %v, want 0", got)
	}
}

// GOAWAY in the middle of a load: the server finishes the streams it read
// and refuses the others, which go out again on a fresh connection. No
// query fails, and the pool never holds more than PoolSize connections.
func TestDoHGoAwayMidStream(t *testing.T) {
	tests := []struct {
		name        string
		after       int32
		n, conc     int
		wantAtLeast int64 // connections the behaviour forces
	}{
		{"after 1, one query at a time", 1, 20, 1, 20},
		{"after 25, 16 at once", 25, 1000, 16, 1000 / 25 / 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, d := newTestDoH(t, dnstest.Options{}, nil)
			srv.Behavior.GoAwayAfter.Store(tt.after)
			srv.Behavior.SetDelay(time.Millisecond) // streams stay in flight across the GOAWAY
			m := d.m.m
			g, err := NewGroup(testGroupOptions(GroupOptions{Upstreams: []Upstream{d}, MaxFails: 1,
				Logger: testLogger(), Metrics: m}))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = g.Close() })
			ok, err := runQueries(t, g, tt.n, tt.conc, answerTimeout)
			if err != nil || ok != int64(tt.n) {
				t.Fatalf("%d/%d answered right; first error: %v", ok, tt.n, err)
			}
			if got := srv.Accepted(); got < tt.wantAtLeast {
				t.Errorf("server accepted %d connections; the GOAWAYs did not bite", got)
			}
			if got := srv.MaxOpen(); got > int64(d.opts.PoolSize) {
				t.Errorf("%d connections open at once, above PoolSize %d", got, d.opts.PoolSize)
			}
			if got := counterValue(m.HealthState.WithLabelValues(d.Name())); got != 1 {
				t.Error("GOAWAYs counted against the upstream's health")
			}
			eventually(t, 2*time.Second, "pool bookkeeping to settle", func() bool { return d.consistent() })
			t.Logf("%d connections, %v queries resent", srv.Accepted(), counterValue(d.m.resent))
		})
	}
}

// The server's stream limit caps each connection; queries past it wait for
// room or for another connection, within the pool.
func TestDoHStreamLimit(t *testing.T) {
	for _, pool := range []int{1, 2} {
		t.Run(fmt.Sprintf("PoolSize=%d", pool), func(t *testing.T) {
			srv, d := newTestDoH(t, dnstest.Options{MaxStreams: 4}, func(o *DoHOptions) { o.PoolSize = pool })
			srv.Behavior.SetDelay(5 * time.Millisecond)
			ok, err := runQueries(t, d, 200, 32, answerTimeout)
			if err != nil || ok != 200 {
				t.Fatalf("%d/200 answered right; first error: %v", ok, err)
			}
			if got := srv.MaxOutstanding(); got > 4 {
				t.Errorf("server saw %d streams at once on a connection, above its limit of 4", got)
			}
			if got := srv.MaxOpen(); got > int64(pool) {
				t.Errorf("%d connections open at once, above PoolSize %d", got, pool)
			}
			if pool > 1 && srv.Accepted() < 2 {
				t.Errorf("server accepted %d connections: full connections did not make the pool grow", srv.Accepted())
			}
		})
	}
}

// The per-connection cap of our own applies under the server's.
func TestDoHMaxInFlightPerConn(t *testing.T) {
	srv, d := newTestDoH(t, dnstest.Options{}, func(o *DoHOptions) { o.PoolSize = 1; o.MaxInFlightPerConn = 3 })
	srv.Behavior.SetDelay(5 * time.Millisecond)
	ok, err := runQueries(t, d, 60, 20, answerTimeout)
	if err != nil || ok != 60 {
		t.Fatalf("%d/60 answered right; first error: %v", ok, err)
	}
	if got := srv.MaxOutstanding(); got > 3 {
		t.Errorf("server saw %d streams at once, above MaxInFlightPerConn 3", got)
	}
}

// A mixed group: a DoH upstream that fails over HTTP is retried on a DoT
// one and marked down; the probe puts it back once it answers.
func TestDoHInGroupFailsOver(t *testing.T) {
	answerWith := func(ip netip.Addr) dnstest.Handler {
		return func(q *dns.Msg) *dns.Msg {
			r := dnstest.DefaultHandler(q)
			for _, rr := range r.Answer {
				if a, ok := rr.(*dns.A); ok {
					a.A = ip.AsSlice()
				}
			}
			return r
		}
	}
	dohIP, dotIP := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")
	m := NewMetrics(prometheus.NewRegistry())
	dohSrv, doh := newTestDoH(t, dnstest.Options{Handler: answerWith(dohIP)}, func(o *DoHOptions) { o.Metrics = m })
	dotSrv := dnstest.New(t, dnstest.Options{Handler: answerWith(dotIP)})
	dot := newTestDoT(t, dotSrv, func(o *DoTOptions) { o.Metrics = m })
	g, err := NewGroup(testGroupOptions(GroupOptions{Upstreams: []Upstream{doh, dot}, Policy: Sequential,
		MaxFails: 2, ProbeInterval: 100 * time.Millisecond, Logger: testLogger(), Metrics: m}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	ask := func(name string) netip.Addr {
		t.Helper()
		resp, err := g.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, name, dns.TypeA))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(resp.Wire()); err != nil || len(r.Answer) != 1 {
			t.Fatalf("%s: answer %v, %v", name, r, err)
		}
		ip, _ := netip.AddrFromSlice(r.Answer[0].(*dns.A).A)
		return ip.Unmap()
	}
	if got := ask("first.example."); got != dohIP {
		t.Fatalf("answered by %s, want the DoH upstream first", got)
	}
	dohSrv.Behavior.Status.Store(502)
	for i := range 2 {
		if got := ask(fmt.Sprintf("f%d.example.", i)); got != dotIP {
			t.Fatalf("answered by %s while the DoH upstream fails, want the DoT one", got)
		}
	}
	if !g.members[0].down.Load() {
		t.Fatal("DoH upstream not marked down after 2 HTTP failures")
	}
	if got := counterValue(m.HTTPErrors.WithLabelValues(doh.Name(), httpStatus)); got < 2 {
		t.Errorf("http_errors_total{reason=status} = %v, want at least 2", got)
	}
	if got := counterValue(m.Retries.WithLabelValues(dot.Name())); got < 2 {
		t.Errorf("retries_total on the DoT upstream = %v, want at least 2", got)
	}
	dohSrv.Behavior.Status.Store(0)
	eventually(t, 3*time.Second, "the probe to bring the DoH upstream back", func() bool { return !g.members[0].down.Load() })
	if got := ask("back.example."); got != dohIP {
		t.Errorf("answered by %s after the DoH upstream came back, want it", got)
	}
}

// Retries of a failing DoH upstream stop at the query's deadline: with
// attempts to spare, the query still ends in time.
func TestDoHRetriesStopAtDeadline(t *testing.T) {
	srv, d := newTestDoH(t, dnstest.Options{}, nil)
	// Connected first: the deadline is for the attempts, and a handshake on
	// a loaded machine can take all of it.
	if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "warm.example.", dns.TypeA)); err != nil {
		t.Fatal(err)
	}
	srv.Behavior.Status.Store(503)
	g, err := NewGroup(testGroupOptions(GroupOptions{Upstreams: []Upstream{d}, MaxAttempts: 1000,
		BaseDelay: 5 * time.Millisecond, MaxFails: 1000, Logger: testLogger(), Metrics: d.m.m}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	const deadline = 300 * time.Millisecond
	start := time.Now()
	_, err = g.Exchange(ctxTimeout(t, deadline), packQuery(t, "r.example.", dns.TypeA))
	took := time.Since(start)
	if !errors.Is(err, ErrHTTP) {
		t.Fatalf("Exchange: %v, want ErrHTTP", err)
	}
	// Retries that ignored the deadline would go on for ever (1000
	// attempts, the backoff doubling from 5 ms); a second past it leaves
	// room for a loaded machine. A backoff overrunning the deadline is
	// TestGroupRetryBounds' to catch.
	if took > deadline+time.Second {
		t.Errorf("the query ended after %s, past its deadline of %s", took, deadline)
	}
	if n := srv.Queries() - 1; n < 2 || n > 64 {
		t.Errorf("server saw %d attempts; want a few, backing off", n)
	}
}

// One slow name among answered ones is ErrSlowAnswer, as for DoT: the
// connection is up, the name is slow.
func TestDoHSlowAnswer(t *testing.T) {
	var slowSeen atomic.Int64
	srv, d := newTestDoH(t, dnstest.Options{Handler: func(q *dns.Msg) *dns.Msg {
		if q.Question[0].Name == "slow.example." {
			slowSeen.Add(1)
			return nil
		}
		return dnstest.DefaultHandler(q)
	}}, nil)
	if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "warm.example.", dns.TypeA)); err != nil {
		t.Fatal(err)
	}
	ctx := newExpiringCtx()
	errc := make(chan error, 1)
	go func() {
		_, err := d.Exchange(ctx, packQuery(t, "slow.example.", dns.TypeA))
		errc <- err
	}()
	eventually(t, 2*time.Second, "the slow query to reach the server", func() bool { return slowSeen.Load() == 1 })
	if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "fast.example.", dns.TypeA)); err != nil {
		t.Fatal(err)
	}
	ctx.expire()
	if err := <-errc; !errors.Is(err, ErrSlowAnswer) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow query: %v, want ErrSlowAnswer and DeadlineExceeded", err)
	}
	if srv.Accepted() != 1 {
		t.Errorf("server accepted %d connections, want 1", srv.Accepted())
	}
}

func TestNewDoHValidates(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{DoH: true})
	tests := map[string]func(*DoHOptions){
		"no address":          func(o *DoHOptions) { o.Addr = netip.AddrPort{} },
		"no server name":      func(o *DoHOptions) { o.ServerName = "" },
		"no path":             func(o *DoHOptions) { o.Path = "" },
		"relative path":       func(o *DoHOptions) { o.Path = "dns-query" },
		"path with query":     func(o *DoHOptions) { o.Path = "/dns-query?dns=x" },
		"path with fragment":  func(o *DoHOptions) { o.Path = "/dns-query#x" },
		"path with space":     func(o *DoHOptions) { o.Path = "/dns query" },
		"no trust":            func(o *DoHOptions) { o.Trust = nil },
		"no logger":           func(o *DoHOptions) { o.Logger = nil },
		"no metrics":          func(o *DoHOptions) { o.Metrics = nil },
		"no pool":             func(o *DoHOptions) { o.PoolSize = 0 },
		"no streams per conn": func(o *DoHOptions) { o.MaxInFlightPerConn = 0 },
		"no query timeout":    func(o *DoHOptions) { o.QueryTimeout = 0 },
	}
	for name, mod := range tests {
		opts := dohOptions(testDoTOptions(srv), srv.Path)
		mod(&opts)
		if d, err := NewDoH(opts); err == nil {
			_ = d.Close()
			t.Errorf("%s: NewDoH accepted %+v", name, opts)
		}
	}
	d, err := NewDoH(dohOptions(testDoTOptions(srv), srv.Path))
	if err != nil {
		t.Fatalf("valid options refused: %v", err)
	}
	_ = d.Close()
}
