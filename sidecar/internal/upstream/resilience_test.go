package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
	"github.com/miekg/dns"
)

// Connections that the upstream closes or resets under load are replaced and
// the queries caught on them are resent: callers see no failure.
func TestUpstreamDropsConnectionsUnderLoad(t *testing.T) {
	tests := []struct {
		name      string
		set       func(b *dnstest.Behavior)
		transport string // "": both
	}{
		{"close after 50", func(b *dnstest.Behavior) { b.CloseAfter.Store(50) }, "dot"},
		{"reset after 50", func(b *dnstest.Behavior) { b.ResetAfter.Store(50) }, ""},
		{"close after 50, delayed", func(b *dnstest.Behavior) { b.CloseAfter.Store(50); b.SetDelay(time.Millisecond) }, "dot"},
		{"reset after 50, delayed", func(b *dnstest.Behavior) { b.ResetAfter.Store(50); b.SetDelay(time.Millisecond) }, ""},
	}
	for _, tr := range transports {
		for _, tt := range tests {
			if tt.transport != "" && tt.transport != tr {
				continue // CloseAfter is DoT's alone
			}
			t.Run(tr+"/"+tt.name, func(t *testing.T) {
				srv := newTestServer(t, tr, dnstest.Options{})
				tt.set(&srv.Behavior)
				d := newTestUpstream(t, srv, nil)
				// 16 in flight, fewer than the 50 a connection lives for: a
				// query resent on a fresh connection is among its first and is
				// answered.
				ok, err := runQueries(t, d, 1000, 16, answerTimeout)
				if err != nil || ok != 1000 {
					t.Fatalf("%d/1000 answered right; first error: %v", ok, err)
				}
				if srv.Accepted() < 1000/50 {
					t.Errorf("server accepted %d connections; the behaviour did not bite", srv.Accepted())
				}
				if counterValue(d.core().m.resent) == 0 {
					t.Error("requests_resent_total = 0; expected queries caught on dying connections")
				}
				eventually(t, 2*time.Second, "pool bookkeeping to settle", func() bool { return d.consistent() })
				t.Logf("%d connections, %v queries resent", srv.Accepted(), counterValue(d.core().m.resent))
			})
		}
	}
}

// An upstream that completes the TLS handshake and then drops every
// connection before answering (a server at its connection limit, or broken)
// is failing once it has done so to newLossesUnreachable new connections in
// a row: the first query is resent once (two connections lost) and fails
// without blame; from the third connection on, each query fails at once
// with ErrUnreachable, which a Group counts, after one connection and no
// resend, rather than dialing again and again until its deadline.
func TestNewConnectionsDroppedInARowAreUnreachable(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			tests := []struct {
				name      string
				set       func(b *dnstest.Behavior)
				wantSends int64 // queries the server reads per connection
			}{
				{"hang up after the handshake", func(b *dnstest.Behavior) { b.HangUp.Store(true) }, 0},
				{"reset on the first query", func(b *dnstest.Behavior) { b.ResetAfter.Store(1) }, 1},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					srv := newTestServer(t, tr, dnstest.Options{})
					tt.set(&srv.Behavior)
					d := newTestUpstream(t, srv, nil)
					// A DoH upstream that hangs up before its SETTINGS fails the
					// dial itself: unreachable from the first connection.
					firstRun := newLossesUnreachable - 1
					if tr == "doh" && tt.wantSends == 0 {
						firstRun = 0
					}
					// Many rounds: a connection dropped between being published and
					// being used is a race that only some rounds hit.
					const n = 50
					for i := range n {
						_, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "h.example.", dns.TypeA))
						if i == 0 && firstRun > 0 {
							if !errors.Is(err, errNewConnLost) || errors.Is(err, ErrUnreachable) {
								t.Fatalf("query %d: %v, want errNewConnLost (and not ErrUnreachable)", i, err)
							}
							continue
						}
						if !errors.Is(err, ErrUnreachable) || errors.Is(err, ErrConnClosed) {
							t.Fatalf("query %d: %v, want ErrUnreachable (and not ErrConnClosed)", i, err)
						}
					}
					want := int64(n - 1 + firstRun) // the first query's run, then one each
					if firstRun == 0 {
						want = n
					}
					if got := srv.Accepted(); got != want {
						t.Errorf("server accepted %d connections for %d queries, want %d", got, n, want)
					}
					if got := srv.Queries(); got != want*tt.wantSends {
						t.Errorf("server read %d queries, want %d", got, want*tt.wantSends)
					}
					// The first query went out on both of its connections; after a
					// hang-up it may instead have waited for the second dial,
					// never queued on the first.
					got := counterValue(d.core().m.resent)
					if firstRun == 0 && got != 0 || got > 1 || tt.wantSends > 0 && got != 1 {
						t.Errorf("requests_resent_total = %v, want 1 at most, and 1 after a reset (0 for a failed DoH dial)", got)
					}
					eventually(t, 2*time.Second, "every dead connection to be forgotten", func() bool {
						return d.consistent() && d.openConns() == 0 && d.usable() == 0 && counterValue(d.core().m.open) == 0
					})
					srv.Behavior.HangUp.Store(false)
					srv.Behavior.ResetAfter.Store(0)
					if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "h.example.", dns.TypeA)); err != nil {
						t.Fatalf("Exchange once the upstream behaves: %v", err)
					}
				})
			}
		})
	}
}

// A new connection reset with queries pipelined on it costs them one more
// send, not an error: the upstream may close connections after some number
// of queries, or be restarting. An answer ends the run of such losses, so
// the next one is resent too.
func TestNewConnectionLostIsResent(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			srv := newTestServer(t, tr, dnstest.Options{})
			d := newTestUpstream(t, srv, nil)
			for round := range 3 {
				srv.Behavior.ResetNextConns.Store(1)
				d.retireAll() // the next query needs a new connection
				eventually(t, 2*time.Second, "the retired connections to close", func() bool { return d.openConns() == 0 })
				q := packQuery(t, fmt.Sprintf("r%d.example.", round), dns.TypeA)
				resp, err := d.Exchange(ctxTimeout(t, answerTimeout), q)
				if err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
				if err := checkAnswer(resp, q); err != nil {
					t.Fatal(err)
				}
				if got := counterValue(d.core().m.resent); got != float64(round+1) {
					t.Errorf("round %d: requests_resent_total = %v, want %d", round, got, round+1)
				}
			}
			if got := srv.Accepted(); got != 6 {
				t.Errorf("server accepted %d connections, want 6 (a lost one and its replacement per round)", got)
			}
		})
	}
}

// A connection that has answered before and dies under a query is the
// normal end of a pooled connection: the query is resent on a fresh one
// without the caller noticing. If the fresh connections die too before
// answering anything, the query fails after its sends with an error that
// does not blame the upstream (two new connections lost in a row are not
// yet a failing upstream).
func TestServedConnectionDying(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			tests := []struct {
				name       string
				resetAfter int32 // set once the first connection has answered one query
				wantErr    error // nil: answered
				wantSends  int64 // the query's sends
			}{
				{"resent and answered on a fresh connection", 2, nil, 2},
				{"the fresh connections die too", 1, errNewConnLost, maxAttempts},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					srv := newTestServer(t, tr, dnstest.Options{})
					d := newTestUpstream(t, srv, nil)
					if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "warm.example.", dns.TypeA)); err != nil {
						t.Fatal(err)
					}
					srv.Behavior.ResetAfter.Store(tt.resetAfter)
					q := packQuery(t, "x.example.", dns.TypeA)
					resp, err := d.Exchange(ctxTimeout(t, answerTimeout), q)
					switch {
					case tt.wantErr == nil && err == nil:
						if err := checkAnswer(resp, q); err != nil {
							t.Fatal(err)
						}
					case tt.wantErr == nil || !errors.Is(err, tt.wantErr):
						t.Fatalf("Exchange: %v, want %v", err, tt.wantErr)
					}
					if errors.Is(err, ErrUnreachable) {
						t.Errorf("Exchange: %v; two new connections lost are not yet an unreachable upstream", err)
					}
					// The warm query, then the query's sends.
					if got := srv.Queries(); got != 1+tt.wantSends {
						t.Errorf("server read %d queries, want %d", got, 1+tt.wantSends)
					}
					if got := counterValue(d.core().m.resent); got != float64(tt.wantSends-1) {
						t.Errorf("requests_resent_total = %v, want %d", got, tt.wantSends-1)
					}
				})
			}
		})
	}
}

func TestMismatchedResponsesDropped(t *testing.T) {
	tests := []struct {
		name       string
		mangle     dnstest.Mangle
		thenAnswer bool
	}{
		{"wrong ID, then the answer", dnstest.MangleID, true},
		{"wrong question, then the answer", dnstest.MangleQuestion, true},
		{"wrong ID only", dnstest.MangleID, false},
		{"wrong question only", dnstest.MangleQuestion, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := dnstest.New(t, dnstest.Options{})
			d := newTestDoT(t, srv, nil)
			// Connected first: a dial starved past the short deadline below
			// would leave nothing sent and nothing to count.
			if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "warm.example.", dns.TypeA)); err != nil {
				t.Fatal(err)
			}
			srv.Behavior.SetMangle(tt.mangle, tt.thenAnswer)
			const n = 20
			for i := range n {
				q := packQuery(t, "m.example.", dns.TypeA)
				timeout := 2 * time.Second // answered at once; only a stall could take this long
				if !tt.thenAnswer {
					timeout = 200 * time.Millisecond // never answered
				}
				resp, err := d.Exchange(ctxTimeout(t, timeout), q)
				if tt.thenAnswer {
					if err != nil {
						t.Fatalf("query %d: %v", i, err)
					}
					if err := checkAnswer(resp, q); err != nil {
						t.Fatalf("query %d: %v", i, err)
					}
				} else if !errors.Is(err, context.DeadlineExceeded) || resp.Wire() != nil {
					t.Fatalf("query %d: got %d bytes, error %v; want DeadlineExceeded", i, len(resp.Wire()), err)
				}
				if !tt.thenAnswer {
					break // one timeout shows it; more only slow the test
				}
			}
			want := float64(n)
			if !tt.thenAnswer {
				want = 1
			}
			eventually(t, 2*time.Second, "mismatched responses to be counted", func() bool {
				return counterValue(d.m.mismatched) == want
			})
		})
	}
}

// An Exchange honours its deadline; the slot is freed and the late answer
// is dropped and counted.
func TestDeadlineHonoured(t *testing.T) {
	tests := []struct {
		name     string
		set      func(b *dnstest.Behavior)
		wantLate bool // the answer comes after the deadline
	}{
		{"dropped", func(b *dnstest.Behavior) { b.Drop.Store(true) }, false},
		{"late", func(b *dnstest.Behavior) { b.SetDelay(300 * time.Millisecond) }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := dnstest.New(t, dnstest.Options{})
			d := newTestDoT(t, srv, nil)
			// Connected first, so that the query is sent whatever a loaded
			// machine does to the handshake.
			if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "warm.example.", dns.TypeA)); err != nil {
				t.Fatal(err)
			}
			tt.set(&srv.Behavior)
			const timeout = 100 * time.Millisecond
			start := time.Now()
			_, err := d.Exchange(ctxTimeout(t, timeout), packQuery(t, "d.example.", dns.TypeA))
			took := time.Since(start)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Exchange error %v, want DeadlineExceeded", err)
			}
			if took < timeout || took > timeout+time.Second {
				t.Errorf("Exchange returned after %s, want about %s", took, timeout)
			}
			for _, c := range d.activeConns() {
				if l := c.load.Load(); l != 0 {
					t.Errorf("connection still has %d in flight", l)
				}
			}
			if tt.wantLate {
				eventually(t, 2*time.Second, "the late answer to be dropped", func() bool {
					return counterValue(d.m.mismatched) == 1
				})
			}
		})
	}
}

// A query without a deadline gets QueryTimeout.
func TestQueryTimeoutDefault(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			srv := newTestServer(t, tr, dnstest.Options{})
			srv.Behavior.Drop.Store(true)
			d := newTestUpstream(t, srv, func(o *DoTOptions) { o.QueryTimeout = 50 * time.Millisecond })
			_, err := d.Exchange(context.Background(), packQuery(t, "n.example.", dns.TypeA))
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Exchange error %v, want DeadlineExceeded", err)
			}
		})
	}
}

// A connection that answers nothing for longer than silentAfter while a
// query waits is presumed dead (half-open) and retired.
func TestSilentConnectionRetired(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			srv := newTestServer(t, tr, dnstest.Options{})
			d := newTestUpstream(t, srv, nil)
			if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "s.example.", dns.TypeA)); err != nil {
				t.Fatal(err)
			}
			srv.Behavior.Drop.Store(true)
			// The deadline passes once silentAfter has surely gone by since the
			// send: the server has read the query by the time it is counted.
			ctx := newExpiringCtx()
			errc := make(chan error, 1)
			go func() {
				_, err := d.Exchange(ctx, packQuery(t, "s.example.", dns.TypeA))
				errc <- err
			}()
			eventually(t, 2*time.Second, "the query to reach the server", func() bool { return srv.Queries() == 2 })
			time.AfterFunc(silentAfter, ctx.expire)
			if err := <-errc; !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Exchange error %v, want DeadlineExceeded", err)
			}
			eventually(t, 2*time.Second, "the silent connection to close", func() bool { return srv.Open() == 0 })
			srv.Behavior.Drop.Store(false)
			if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "s.example.", dns.TypeA)); err != nil {
				t.Fatal(err)
			}
			if srv.Accepted() != 2 {
				t.Errorf("server accepted %d connections, want 2", srv.Accepted())
			}
		})
	}
}

func TestConnectionLifetime(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			tests := []struct {
				name string
				mod  func(*DoTOptions)
			}{
				{"idle timeout", func(o *DoTOptions) { o.IdleTimeout = 100 * time.Millisecond }},
				{"max age", func(o *DoTOptions) { o.MaxAge = 100 * time.Millisecond }},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					srv := newTestServer(t, tr, dnstest.Options{})
					d := newTestUpstream(t, srv, tt.mod)
					if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "l.example.", dns.TypeA)); err != nil {
						t.Fatal(err)
					}
					eventually(t, 3*time.Second, "the connection to close", func() bool { return srv.Open() == 0 })
					// The socket closes before the pool forgets the connection, so
					// the server can see the close before the gauge falls.
					eventually(t, 2*time.Second, "connections_open to fall to 0", func() bool { return counterValue(d.core().m.open) == 0 })
					if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "l.example.", dns.TypeA)); err != nil {
						t.Fatalf("Exchange after close: %v", err)
					}
					// 2, or more if a stall outlasted MaxAge between a dial and its use.
					if srv.Accepted() < 2 {
						t.Errorf("server accepted %d connections, want a new one after the close", srv.Accepted())
					}
				})
			}
		})
	}
}

// A connection past MaxAge that still has queries in flight drains: they
// are answered on it, new ones go to a fresh connection.
func TestMaxAgeDrainsInFlight(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			const maxAge = 500 * time.Millisecond
			srv := newTestServer(t, tr, dnstest.Options{})
			d := newTestUpstream(t, srv, func(o *DoTOptions) { o.MaxAge = maxAge; o.PoolSize = 2 })
			if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "warm.example.", dns.TypeA)); err != nil {
				t.Fatal(err)
			}
			// All 8 are on the connection long before it reaches MaxAge, and
			// answered after.
			srv.Behavior.SetDelay(maxAge + 250*time.Millisecond)
			ok, err := runQueries(t, d, 8, 8, answerTimeout)
			if err != nil || ok != 8 {
				t.Fatalf("%d/8 answered; first error: %v", ok, err)
			}
			if got := counterValue(d.core().m.resent); got != 0 {
				t.Errorf("requests_resent_total = %v; a retired connection must drain, not drop its queries", got)
			}
		})
	}
}

// Retiring the last usable connection while the pool has no room for a
// replacement must not make new queries wait for the drain, which a slow
// name in flight stretches to drainGrace (1s) and more: the connection
// retired first is closed at once, its queries resent, and new queries are
// answered on a replacement right away.
func TestRetiringEveryConnectionDoesNotStall(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			tests := []struct {
				name     string
				poolSize int
				maxAge   time.Duration // 0: retired by hand, all at once
			}{
				{"pool of 1 at max age", 1, 200 * time.Millisecond},
				{"pool of 2 retired at once", 2, 0},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					var slowSeen atomic.Int64
					srv := newTestServer(t, tr, dnstest.Options{Handler: func(q *dns.Msg) *dns.Msg {
						if len(q.Question) == 1 && strings.HasPrefix(q.Question[0].Name, "slow") {
							slowSeen.Add(1)
							return nil
						}
						return dnstest.DefaultHandler(q)
					}})
					d := newTestUpstream(t, srv, func(o *DoTOptions) {
						o.PoolSize = tt.poolSize
						if tt.maxAge != 0 {
							o.MaxAge = tt.maxAge
						}
					})
					if tt.poolSize > 1 {
						if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "warm.example.", dns.TypeA)); err != nil {
							t.Fatal(err)
						}
						d.grow()
						eventually(t, 2*time.Second, "the pool to fill", func() bool { return d.usable() == tt.poolSize })
					}
					// A slow query in flight on every connection.
					for i := range tt.poolSize {
						go func() {
							_, _ = d.Exchange(ctxTimeout(t, 5*time.Second), packQuery(t, fmt.Sprintf("slow%d.example.", i), dns.TypeA))
						}()
						eventually(t, 2*time.Second, "the slow query to reach the upstream", func() bool { return slowSeen.Load() == int64(i+1) })
					}
					conns := d.conns()
					if len(conns) != tt.poolSize {
						t.Fatalf("%d connections, want %d", len(conns), tt.poolSize)
					}
					if tt.maxAge == 0 {
						for _, c := range conns {
							c.retire("test")
						}
					}
					eventually(t, 2*time.Second, "every connection to be retired", func() bool {
						for _, c := range conns {
							if !c.isClosing() {
								return false
							}
						}
						return true
					})
					// Well under drainGrace: a query waiting for the drain fails.
					start := time.Now()
					q := packQuery(t, "fast.example.", dns.TypeA)
					resp, err := d.Exchange(ctxTimeout(t, drainGrace*6/10), q)
					if err == nil {
						err = checkAnswer(resp, q)
					}
					if err != nil {
						t.Fatalf("query after every connection was retired: %v (after %s)", err, time.Since(start).Round(time.Millisecond))
					}
				})
			}
		})
	}
}

// Close fails what is in flight with ErrClosed at once, whether the query
// waits for its answer or for the dial of its connection (the dial is cut
// short), and Exchange keeps failing with ErrClosed afterwards.
func TestCloseFailsInFlight(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			tests := []struct {
				name    string
				set     func(b *dnstest.Behavior)
				waiting func(srv *dnstest.Server) bool // the query is where the case wants it
			}{
				{"waiting for the answer", func(b *dnstest.Behavior) { b.Drop.Store(true) },
					func(srv *dnstest.Server) bool { return srv.Queries() == 1 }},
				{"waiting for the dial", func(b *dnstest.Behavior) { b.BlackHole.Store(true) },
					func(srv *dnstest.Server) bool { return srv.Accepted() == 1 }},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					srv := newTestServer(t, tr, dnstest.Options{})
					tt.set(&srv.Behavior)
					d := newTestUpstream(t, srv, func(o *DoTOptions) { o.DialTimeout = 10 * time.Second })
					errc := make(chan error, 1)
					go func() {
						_, err := d.Exchange(ctxTimeout(t, 10*time.Second), packQuery(t, "c.example.", dns.TypeA))
						errc <- err
					}()
					eventually(t, 2*time.Second, "the query to be "+tt.name, func() bool { return tt.waiting(srv) })
					start := time.Now()
					if err := d.Close(); err != nil {
						t.Fatal(err)
					}
					if err := <-errc; !errors.Is(err, ErrClosed) {
						t.Fatalf("in-flight Exchange: %v, want ErrClosed", err)
					}
					if took := time.Since(start); took > 2*time.Second {
						t.Errorf("Close and the in-flight query took %s", took)
					}
					if _, err := d.Exchange(ctxTimeout(t, time.Second), packQuery(t, "c.example.", dns.TypeA)); !errors.Is(err, ErrClosed) {
						t.Fatalf("Exchange after Close: %v, want ErrClosed", err)
					}
					eventually(t, 2*time.Second, "the server to see the connection close", func() bool { return srv.Open() == 0 })
				})
			}
		})
	}
}

func TestBadQuery(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			srv := newTestServer(t, tr, dnstest.Options{})
			d := newTestUpstream(t, srv, nil)
			gm := packQuery(t, "q.example.", dns.TypeA)
			good := gm.Wire()
			parse := func(b []byte) dnswire.Msg {
				m, _ := dnswire.Parse(b)
				return m
			}
			two := new(dns.Msg)
			two.Question = []dns.Question{{Name: "a.", Qtype: dns.TypeA, Qclass: dns.ClassINET}, {Name: "b.", Qtype: dns.TypeA, Qclass: dns.ClassINET}}
			for name, q := range map[string]dnswire.Msg{
				"zero Msg":        {},
				"short header":    parse(good[:11]),
				"cut in question": parse(good[:len(good)-3]),
				"too long":        parse(append(good, make([]byte, 65536)...)),
				"no question":     parse(good[:12]),
				"two questions":   parseMsg(t, two),
			} {
				if _, err := d.Exchange(ctxTimeout(t, time.Second), q); !errors.Is(err, ErrBadQuery) {
					t.Errorf("%s: %v, want ErrBadQuery", name, err)
				}
			}
			if srv.Accepted() != 0 {
				t.Errorf("a bad query made a connection")
			}
		})
	}
}

func TestNewDoTValidates(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	tests := map[string]func(*DoTOptions){
		"no address":         func(o *DoTOptions) { o.Addr = netip.AddrPort{} },
		"port 0":             func(o *DoTOptions) { o.Addr = netip.AddrPortFrom(o.Addr.Addr(), 0) },
		"no server name":     func(o *DoTOptions) { o.ServerName = "" },
		"no logger":          func(o *DoTOptions) { o.Logger = nil },
		"no metrics":         func(o *DoTOptions) { o.Metrics = nil },
		"no trust":           func(o *DoTOptions) { o.Trust = nil },
		"negative pool":      func(o *DoTOptions) { o.PoolSize = -1 },
		"no pool":            func(o *DoTOptions) { o.PoolSize = 0 },
		"negative timeout":   func(o *DoTOptions) { o.DialTimeout = -time.Second },
		"no idle timeout":    func(o *DoTOptions) { o.IdleTimeout = 0 },
		"no max age":         func(o *DoTOptions) { o.MaxAge = 0 },
		"no in-flight":       func(o *DoTOptions) { o.MaxInFlightPerConn = 0 },
		"in-flight too high": func(o *DoTOptions) { o.MaxInFlightPerConn = 40000 },
		"no query timeout":   func(o *DoTOptions) { o.QueryTimeout = 0 },
	}
	for name, mod := range tests {
		opts := testDoTOptions(srv)
		mod(&opts)
		if d, err := NewDoT(opts); err == nil {
			_ = d.Close()
			t.Errorf("%s: NewDoT accepted %+v", name, opts)
		}
	}
	d, err := NewDoT(testDoTOptions(srv))
	if err != nil {
		t.Fatalf("valid options refused: %v", err)
	}
	_ = d.Close()
}

// Close while queries are in full flow: every Exchange returns (answered or
// ErrClosed), nothing panics, and no goroutine is left (TestMain checks).
func TestCloseUnderLoad(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			srv := newTestServer(t, tr, dnstest.Options{Raw: dnstest.ReflectRaw})
			d := newTestUpstream(t, srv, nil)
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			started := make(chan struct{}, 64)
			for i := range 64 {
				wg.Go(func() {
					q := packQuery(t, fmt.Sprintf("c%d.example.", i), dns.TypeA)
					for n := 0; ; n++ {
						if n == 10 {
							started <- struct{}{}
						}
						_, err := d.Exchange(ctxTimeout(t, answerTimeout), q)
						if err != nil {
							errs <- err
							return
						}
					}
				})
			}
			for range 64 {
				<-started
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if !errors.Is(err, ErrClosed) {
					t.Errorf("Exchange during Close: %v, want ErrClosed", err)
				}
			}
		})
	}
}

// The trust changes back and forth under load: connections that stop
// passing are retired and replaced; queries keep being answered whenever
// the trust accepts the server, and the race detector watches the swaps.
func TestTrustUpdatesUnderLoad(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			srv := newTestServer(t, tr, dnstest.Options{Raw: dnstest.ReflectRaw})
			trust := NewTrust(srv.CAPool, [][32]byte{srv.LeafPinSum})
			d := newTestUpstream(t, srv, func(o *DoTOptions) { o.Trust = trust })
			done := make(chan error, 1)
			go func() {
				pins := [][][32]byte{{srv.CAPinSum}, {srv.LeafPinSum}, {foreignPin, srv.CAPinSum}}
				for i := range 60 {
					trust.Update(srv.CAPool, pins[i%len(pins)])
					if n := d.Reverify(); n != 0 {
						done <- fmt.Errorf("Reverify retired %d connections under a trust that accepts them", n)
						return
					}
				}
				done <- nil
			}()
			ok, err := runQueries(t, d, 2000, 32, answerTimeout)
			if rerr := <-done; rerr != nil {
				t.Fatal(rerr)
			}
			if err != nil || ok != 2000 {
				t.Fatalf("%d/2000 answered right; first error: %v", ok, err)
			}

			// Now a trust that rejects the server: the next queries fail as TLS
			// failures, never reach the server over an untrusted connection.
			trust.Update(srv.CAPool, [][32]byte{foreignPin})
			d.Reverify()
			eventually(t, 3*time.Second, "the rejected connections to close", func() bool { return srv.Open() == 0 })
			before := srv.Queries()
			if _, err := d.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "t.example.", dns.TypeA)); !errors.Is(err, ErrPinMismatch) {
				t.Fatalf("Exchange under a rejecting trust: %v, want ErrPinMismatch", err)
			}
			if srv.Queries() != before {
				t.Error("a query reached the server under a trust that rejects it")
			}
		})
	}
}

// When the deadline and the death of a pooled connection arrive together,
// the error still says the connection closed: a Group must not count a
// pooled connection closing as the upstream timing out.
func TestDeadlineRacingConnectionDeath(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	d := newTestDoT(t, srv, nil)
	c := &conn{d: d, inflight: make(map[uint16]*request)} // req is no longer in flight on it
	req := &request{done: make(chan result, 1)}
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	closed := fmt.Errorf("%w: reading: EOF", ErrConnClosed)
	// Both the deadline and the result are ready; select picks either, so
	// many rounds go through the deadline's side.
	for i := range 64 {
		req.done <- result{err: closed}
		_, err := d.await(ctx, c, req, time.Now())
		if !errors.Is(err, ErrConnClosed) {
			t.Fatalf("round %d: %v; the connection's death was lost", i, err)
		}
	}
}

// stuckConn passes I/O through until stick is called; from then on writes
// block, as on a socket whose peer stopped reading, until the write
// deadline passes or the connection is closed.
type stuckConn struct {
	net.Conn
	stuck  atomic.Bool
	closed chan struct{}
	once   sync.Once

	mu       sync.Mutex
	deadline time.Time
}

func (s *stuckConn) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	s.deadline = t
	s.mu.Unlock()
	return s.Conn.SetWriteDeadline(t)
}

func (s *stuckConn) SetDeadline(t time.Time) error {
	_ = s.SetWriteDeadline(t)
	return s.Conn.SetDeadline(t)
}

func (s *stuckConn) Write(b []byte) (int, error) {
	if !s.stuck.Load() {
		return s.Conn.Write(b)
	}
	s.mu.Lock()
	dl := s.deadline
	s.mu.Unlock()
	var timeout <-chan time.Time
	if !dl.IsZero() {
		t := time.NewTimer(time.Until(dl))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-s.closed:
		return 0, net.ErrClosed
	case <-timeout:
		return 0, os.ErrDeadlineExceeded
	}
}

func (s *stuckConn) Close() error {
	s.once.Do(func() { close(s.closed) })
	return s.Conn.Close()
}

// A graceful close sends close_notify; an upstream that stopped reading
// holds it for at most closeNotifyTimeout, not the 5 s crypto/tls allows
// itself (Close, and so the sidecar's shutdown, waits for it).
func TestCloseNotifyBounded(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	d := newTestDoT(t, srv, nil)
	raw, err := net.Dial("tcp", srv.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	sc := &stuckConn{Conn: raw, closed: make(chan struct{})}
	defer sc.Close()
	tc := tls.Client(sc, &tls.Config{RootCAs: srv.CAPool, ServerName: srv.ServerName, MinVersion: tls.VersionTLS12})
	if err := tc.HandshakeContext(ctxTimeout(t, answerTimeout)); err != nil {
		t.Fatal(err)
	}
	sc.stuck.Store(true)
	c := &conn{d: d, tc: tc}
	start := time.Now()
	c.closeSocket()
	if took := time.Since(start); took > closeNotifyTimeout+time.Second {
		t.Errorf("graceful close toward a peer that stopped reading took %s, want about %s", took.Round(time.Millisecond), closeNotifyTimeout)
	}
}
