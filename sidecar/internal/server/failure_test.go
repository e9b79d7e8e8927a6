package server

import (
	"cmp"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestFailures checks that every way the upstream can fail gives SERVFAIL,
// with the Extended DNS Error the failure calls for when the query carried
// EDNS and no OPT record at all when it did not; a query the upstream
// rejects as malformed gets FORMERR without EDE.
func TestFailures(t *testing.T) {
	const timeout = 300 * time.Millisecond
	ts := startServer(t, Options{QueryTimeout: timeout})
	const edeNRA, edeNet = int(dns.ExtendedErrorCodeNoReachableAuthority), int(dns.ExtendedErrorCodeNetworkError)
	tests := []struct {
		label string
		ede   int // noEDE: an OPT record without EDE
		rcode int // 0: SERVFAIL
	}{
		{"err-unreachable", edeNRA, 0},
		{"err-alldown", edeNRA, 0},
		{"err-connclosed", edeNRA, 0},
		{"err-timeout", edeNRA, 0},
		{"err-bad", edeNRA, 0},
		{"err-closed", edeNRA, 0},
		{"err-unknown", edeNRA, 0},
		{"err-tls", edeNet, 0},
		{"err-pin", edeNet, 0},
		{"err-busy", int(dns.ExtendedErrorCodeOther), 0}, // the sidecar's own limit
		{"err-badquery", noEDE, dns.RcodeFormatError},    // the client's fault: FORMERR
		{"garbage", edeNRA, 0},                           // not a DNS message
		{"slow", edeNRA, 0},                              // the query's deadline
	}
	for _, network := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			for _, edns := range []bool{true, false} {
				name := network + "/" + tt.label + "/no EDNS"
				if edns {
					name = network + "/" + tt.label + "/EDNS"
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					q := newQuery(tt.label+".example.", dns.TypeA)
					if edns {
						q.SetEdns0(1232, true)
					}
					start := time.Now()
					r, _ := ask(t, network, ts.addr(t, network, loopback4), q)
					elapsed := time.Since(start)
					wantRcode := cmp.Or(tt.rcode, dns.RcodeServerFailure)
					if r.Rcode != wantRcode || r.Id != q.Id || len(r.Question) != 1 {
						t.Fatalf("answer %v, want %s to the question", r.MsgHdr, dns.RcodeToString[wantRcode])
					}
					if !edns {
						if r.IsEdns0() != nil {
							t.Fatalf("OPT %v in the answer to a query without one", r.IsEdns0())
						}
						return
					}
					e := ede(r)
					switch {
					case r.IsEdns0() == nil:
						t.Fatalf("no OPT in the answer to a query with one")
					case tt.ede == noEDE && e != nil:
						t.Fatalf("EDE %v, want none", e)
					case tt.ede != noEDE && (e == nil || int(e.InfoCode) != tt.ede):
						t.Fatalf("EDE %v, want %d", e, tt.ede)
					}
					if !r.IsEdns0().Do() {
						t.Errorf("DO bit not echoed")
					}
					if tt.label == "slow" && (elapsed < timeout || elapsed > timeout+lateSlack) {
						t.Errorf("SERVFAIL after %v, want just after the %v deadline", elapsed, timeout)
					}
				})
			}
		}
	}
}

// TestOverload fills MaxInFlight with held queries too young to give up on:
// further queries get SERVFAIL at once (EDE 0, counted), the canary still
// answers, and service resumes when the held queries are answered.
func TestOverload(t *testing.T) {
	ts := startServer(t, Options{MaxInFlight: 2, QueryTimeout: 10 * time.Second})
	ts.setJostleAfter(time.Hour)
	for i, network := range []string{"udp", "tcp"} {
		c, err := net.Dial(network, ts.addr(t, network, loopback4).String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := writeMsg(c, network, packed(t, newQuery(fmt.Sprintf("hold-%d.example.", i), dns.TypeA))); err != nil {
			t.Fatal(err)
		}
	}
	rel := &releaser{hs: ts.up.awaitHeld(t, 2)}
	defer rel.all()
	for i, network := range []string{"udp", "tcp"} {
		addr := ts.addr(t, network, loopback4)
		r, _ := ask(t, network, addr, ednsQuery("www.example.", dns.TypeA, 1232))
		if e := ede(r); r.Rcode != dns.RcodeServerFailure || e == nil || e.InfoCode != dns.ExtendedErrorCodeOther {
			t.Fatalf("%s while full: rcode %s EDE %v, want SERVFAIL with EDE 0", network, dns.RcodeToString[r.Rcode], e)
		}
		if got := testutil.ToFloat64(ts.m.overloaded); got != float64(i+1) {
			t.Fatalf("overloaded_queries_total = %v, want %d", got, i+1)
		}
		r, _ = ask(t, network, addr, newQuery(CanaryName, dns.TypeTXT))
		if len(r.Answer) != 1 {
			t.Fatalf("%s: canary not answered while full: %v", network, r)
		}
	}
	rel.all()
	waitFor(t, "the held queries to finish", func() bool { return ts.adm.inflight.Load() == 0 })
	r, _ := ask(t, "udp", ts.addr(t, "udp", loopback4), newQuery("www.example.", dns.TypeA))
	if r.Rcode != dns.RcodeSuccess {
		t.Fatalf("after the load: %v", r.MsgHdr)
	}
}

// TestJostle fills MaxInFlight with queries the upstream holds: once they
// are old enough, a new query takes the place of the oldest, which gets
// SERVFAIL with EDE 0 at once, long before its deadline; the younger one
// is left alone.
func TestJostle(t *testing.T) {
	ts := startServer(t, Options{MaxInFlight: 2, QueryTimeout: 10 * time.Second})
	ts.setJostleAfter(50 * time.Millisecond)
	type reply struct {
		r   *dns.Msg
		err error
	}
	var replies [2]chan reply
	var hs [2]map[string]held
	for i := range 2 {
		replies[i] = make(chan reply, 1)
		go func() {
			raw, err := tryExchange("udp", ts.addr(t, "udp", loopback4), packed(t, ednsQuery(fmt.Sprintf("hold-%d.example.", i), dns.TypeA, 1232)))
			r := new(dns.Msg)
			if err == nil {
				err = r.Unpack(raw)
			}
			replies[i] <- reply{r, err}
		}()
		hs[i] = ts.up.awaitHeld(t, 1) // in order: the first is the oldest
		if i == 0 {
			// Jostling gives up on a whole bucket (the queries of one
			// deadlineGrain) at once: the second must come in the next.
			until := ts.adm.cur.Load().until
			waitFor(t, "the first query's admission bucket to end", func() bool { return time.Now().UnixNano() >= until })
		}
	}
	rel := &releaser{hs: hs[1]}
	defer rel.all()
	defer (&releaser{hs: hs[0]}).all()
	time.Sleep(60 * time.Millisecond) // the age under test, not a wait for a condition
	start := time.Now()
	r, _ := ask(t, "udp", ts.addr(t, "udp", loopback4), newQuery("www.example.", dns.TypeA))
	if r.Rcode != dns.RcodeSuccess {
		t.Fatalf("new query beside two old held ones: %s, want an answer", dns.RcodeToString[r.Rcode])
	}
	got := <-replies[0]
	if got.err != nil {
		t.Fatal(got.err)
	}
	if e := ede(got.r); got.r.Rcode != dns.RcodeServerFailure || e == nil || e.InfoCode != dns.ExtendedErrorCodeOther {
		t.Fatalf("oldest held query: rcode %s EDE %v, want SERVFAIL with EDE 0", dns.RcodeToString[got.r.Rcode], e)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("the oldest held query was answered after %s, not at once", took)
	}
	rel.all()
	if got := <-replies[1]; got.err != nil || got.r.Rcode != dns.RcodeSuccess {
		t.Fatalf("younger held query, released: %v %v, want its answer", got.r, got.err)
	}
	if got := testutil.ToFloat64(ts.m.overloaded); got != 0 {
		t.Errorf("overloaded_queries_total = %v, want 0: the new query found room", got)
	}
	if got := ts.adm.jostled.Load(); got != 1 {
		t.Errorf("jostled %d queries, want 1", got)
	}
}
