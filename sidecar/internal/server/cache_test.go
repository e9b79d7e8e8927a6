package server

import (
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/cache"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// newCache puts a cache with the settings' defaults in front of up, behind
// a router, as the sidecar does; it is closed when the test ends, after
// the server.
func newCache(t testing.TB, up upstream.Upstream) *cache.Cache {
	return newCacheWith(t, up, 10000, nil)
}

// newCacheWith is newCache with a size and a clock (nil: the system's).
func newCacheWith(t testing.TB, up upstream.Upstream, size int, clock cache.Clock) *cache.Cache {
	t.Helper()
	r, err := router.New(router.Options{Default: up, UDPSize: testUDPMaxSize, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.New(cache.Options{
		Upstream: r, Size: size, MaxTTL: time.Hour, MaxNegativeTTL: 30 * time.Minute, ServfailTTL: 5 * time.Second,
		StaleMax: 6 * time.Hour, StaleClientTimeout: 1800 * time.Millisecond,
		PrefetchHits: 10, PrefetchWindow: time.Minute, PrefetchPercent: 10,
		QueryTimeout: 2 * time.Second, UDPSize: testUDPMaxSize,
		Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry(), Clock: clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// startCached starts a server whose cache fronts a local upstream.
func startCached(t *testing.T, opts Options) (*testServer, *localUpstream) {
	t.Helper()
	up := newLocalUpstream()
	c := newCache(t, up)
	opts.Upstream, opts.Cache = c, c
	return startServer(t, opts), up
}

// TestCacheHits: a second query for a name is answered from the cache over
// UDP and TCP, with the client's ID and spelling, and never reaches the
// upstream.
func TestCacheHits(t *testing.T) {
	ts, up := startCached(t, Options{})
	for _, network := range []string{"udp", "tcp"} {
		first, _ := ask(t, network, ts.addr(t, network, loopback4), newQuery(network+".example.", dns.TypeA))
		if first.Rcode != dns.RcodeSuccess || len(first.Answer) != 1 {
			t.Fatalf("%s: first answer %v", network, first)
		}
		for _, other := range []string{"udp", "tcp"} {
			q := newQuery(network+".EXAMPLE.", dns.TypeA)
			r, _ := ask(t, other, ts.addr(t, other, loopback4), q)
			if r.Id != q.Id || r.Question[0].Name != q.Question[0].Name || len(r.Answer) != 1 || r.Answer[0].Header().Ttl > 60 {
				t.Errorf("%s, asked over %s: hit %v", network, other, r)
			}
		}
	}
	if n := len(up.received()); n != 2 {
		t.Errorf("upstream got %d queries, want one per name", n)
	}
}

// TestCacheHitsWithoutInFlightSlot: with every in-flight slot taken, over
// all listeners and on the TCP connection, a hit is still answered: the
// read loops answer it themselves.
func TestCacheHitsWithoutInFlightSlot(t *testing.T) {
	ts, up := startCached(t, Options{MaxInFlight: 1, TCPMaxInFlight: 1})
	ts.setJostleAfter(time.Hour) // the held query keeps its slot however long the test takes
	udp := ts.addr(t, "udp", loopback4)
	ask(t, "udp", udp, newQuery("cached.example.", dns.TypeA))
	waitFor(t, "the first query to leave its slot", func() bool { return ts.adm.inflight.Load() == 0 })

	c, err := net.DialTimeout("tcp", ts.addr(t, "tcp", loopback4).String(), ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hold := newQuery("hold-1.example.", dns.TypeA)
	if err := writeMsg(c, "tcp", packed(t, hold)); err != nil {
		t.Fatal(err)
	}
	held := up.awaitHeld(t, 1)
	rel := &releaser{hs: held}
	defer rel.all()

	// The server is full: a miss gets SERVFAIL at once.
	if r, _ := ask(t, "udp", udp, newQuery("miss.example.", dns.TypeA)); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("miss while full: %v, want SERVFAIL", r)
	}
	// A hit does not.
	if r, _ := ask(t, "udp", udp, newQuery("cached.example.", dns.TypeA)); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("hit over UDP while full: %v", r)
	}
	// Nor on the TCP connection whose one slot the held query takes.
	q := newQuery("cached.example.", dns.TypeA)
	if err := writeMsg(c, "tcp", packed(t, q)); err != nil {
		t.Fatal(err)
	}
	b, err := readMsg(c, "tcp")
	if err != nil {
		t.Fatalf("hit over TCP behind a held query: %v", err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(b); err != nil || r.Id != q.Id || len(r.Answer) != 1 {
		t.Errorf("hit over TCP behind a held query: %v %v", r, err)
	}
	rel.all()
	b, err = readMsg(c, "tcp")
	if err != nil || new(dns.Msg).Unpack(b) != nil {
		t.Errorf("the held query's answer: %v", err)
	}
}

// TestCacheHitShaping: a hit fits the client as a relayed answer does: no
// OPT record without EDNS, its size (truncated with TC over UDP), whole
// over TCP.
func TestCacheHitShaping(t *testing.T) {
	ts, up := startCached(t, Options{})
	udp, tcp := ts.addr(t, "udp", loopback4), ts.addr(t, "tcp", loopback4)
	// ednsQuery sets DO, which makes another key.
	ask(t, "tcp", tcp, ednsQuery("big.example.", dns.TypeTXT, 4096))
	ask(t, "tcp", tcp, newQuery("big.example.", dns.TypeTXT))
	tests := []struct {
		name    string
		network string
		q       *dns.Msg
		tc, opt bool
		max     int
	}{
		{"EDNS 4096 over UDP", "udp", ednsQuery("big.example.", dns.TypeTXT, 4096), true, true, testUDPMaxSize},
		{"EDNS 1232 over UDP", "udp", ednsQuery("big.example.", dns.TypeTXT, 1232), true, true, 1232},
		{"no EDNS over UDP", "udp", newQuery("big.example.", dns.TypeTXT), true, false, 512},
		{"no EDNS over TCP", "tcp", newQuery("big.example.", dns.TypeTXT), false, false, 65535},
		{"EDNS over TCP", "tcp", ednsQuery("big.example.", dns.TypeTXT, 512), false, true, 65535},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := udp
			if tt.network == "tcp" {
				addr = tcp
			}
			r, raw := ask(t, tt.network, addr, tt.q)
			if r.Truncated != tt.tc || (r.IsEdns0() != nil) != tt.opt || len(raw) > tt.max || r.Id != tt.q.Id {
				t.Errorf("%d bytes, TC %v, OPT %v; want TC %v, OPT %v, at most %d bytes", len(raw), r.Truncated, r.IsEdns0() != nil, tt.tc, tt.opt, tt.max)
			}
			if !tt.tc && len(r.Answer) != 40 {
				t.Errorf("%d records, want all 40", len(r.Answer))
			}
		})
	}
	if n := len(up.received()); n != 2 {
		t.Errorf("upstream got %d queries, want 2", n)
	}
	if got := counterValue(t, ts.reg, "dot_sidecar_server_truncated_total", "proto", "udp"); got != 3 {
		t.Errorf("truncated_total{udp} = %v, want 3", got)
	}
}

// TestRulesBeforeCache: a cached name asked with a bad EDNS version or a
// non-QUERY opcode gets the protocol's answer, not the cached one.
func TestRulesBeforeCache(t *testing.T) {
	ts, _ := startCached(t, Options{})
	udp := ts.addr(t, "udp", loopback4)
	ask(t, "udp", udp, ednsQuery("www.example.", dns.TypeA, 1232))
	v1 := ednsQuery("www.example.", dns.TypeA, 1232)
	v1.IsEdns0().SetVersion(1)
	notify := newQuery("www.example.", dns.TypeA)
	notify.Opcode = dns.OpcodeNotify
	for name, tt := range map[string]struct {
		q     *dns.Msg
		rcode int
	}{"EDNS version 1": {v1, dns.RcodeBadVers}, "NOTIFY": {notify, dns.RcodeNotImplemented}} {
		r, _ := ask(t, "udp", udp, tt.q)
		if r.Rcode != tt.rcode || len(r.Answer) != 0 {
			t.Errorf("%s: %v, want rcode %d without records", name, r, tt.rcode)
		}
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no series %s{%s=%q}", name, label, value)
	return 0
}

// TestKeepLarger: a read loop keeps the larger of its buffer and the one
// an answer came in, up to maxPooledSize, so that a small local answer
// does not leave the cache a buffer it must grow again.
func TestKeepLarger(t *testing.T) {
	own := make([]byte, 10, pooledMsgSize)
	tests := []struct {
		name  string
		reply []byte
		want  int // cap kept
	}{
		{"written in place", own[:40], pooledMsgSize},
		{"a small local answer", make([]byte, 12, 64), pooledMsgSize},
		{"grown by a larger answer", make([]byte, 900, 1024), 1024},
		{"a large answer", make([]byte, 5000), pooledMsgSize},
		{"no answer", nil, pooledMsgSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := keepLarger(own, tt.reply)
			if len(got) != 0 || cap(got) != tt.want {
				t.Errorf("kept len %d cap %d, want an empty buffer of cap %d", len(got), cap(got), tt.want)
			}
		})
	}
}
