package server

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// staticUpstream answers every query at once with a copy of one prepared
// answer: as cheap as an upstream can be, so that the benchmarks measure the
// server alone. Like a real upstream it returns a fresh buffer per answer,
// parsed and matched to the query.
type staticUpstream struct{ answer []byte }

func (u *staticUpstream) Exchange(_ context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	out := make([]byte, len(u.answer))
	copy(out, u.answer)
	return answerTo(&q, out)
}
func (*staticUpstream) Name() string { return "static" }
func (*staticUpstream) Close() error { return nil }

func benchQuery(b *testing.B) ([]byte, *staticUpstream) {
	q := ednsQuery("www.example.com.", dns.TypeA, 1232)
	r := new(dns.Msg)
	r.SetReply(q)
	r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "www.example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(192, 0, 2, 1).To4()}}
	r.SetEdns0(1232, true)
	return packed(b, q), &staticUpstream{answer: packed(b, r)}
}

// BenchmarkAnswer measures the handler alone (parse, deadline, upstream
// call, answer checks, metrics) for a relayed UDP query, without sockets.
func BenchmarkAnswer(b *testing.B) {
	q, up := benchQuery(b)
	s := newUnstarted(b, Options{Upstream: up, Logger: slog.New(slog.DiscardHandler)})
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		t0 := time.Now()
		r := s.answer(q, protoUDP)
		s.m.done(protoUDP, t0, &r)
		if r.rcode != dns.RcodeSuccess {
			b.Fatal("not NOERROR")
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "queries/s")
}

// BenchmarkAnswerRouted is BenchmarkAnswer through the router the sidecar
// relays with: a table of about a hundred zones (a cluster route with a
// search domain, the special-use and private reverse zones) in front of the
// upstream. The difference is what routing costs each query.
func BenchmarkAnswerRouted(b *testing.B) {
	q, up := benchQuery(b)
	s := newUnstarted(b, Options{Upstream: routed(b, up), Logger: slog.New(slog.DiscardHandler)})
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		t0 := time.Now()
		r := s.answer(q, protoUDP)
		s.m.done(protoUDP, t0, &r)
		if r.rcode != dns.RcodeSuccess {
			b.Fatal("not NOERROR")
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "queries/s")
}

// BenchmarkAnswerCacheHit measures what a read loop does for a cache hit,
// without sockets: parse, the protocol rules, the lookup, the copy shaped
// for the client into the loop's buffer, the size check and metrics. The
// difference from BenchmarkAnswerRouted is what a hit saves; it allocates
// nothing.
func BenchmarkAnswerCacheHit(b *testing.B) {
	q, up := benchQuery(b)
	c := newCache(b, up)
	s := newUnstarted(b, Options{Upstream: c, Cache: c, Logger: slog.New(slog.DiscardHandler)})
	if r := s.answer(q, protoUDP); r.rcode != dns.RcodeSuccess {
		b.Fatal("the miss that fills the cache: not NOERROR")
	}
	// The parsed query lives where the UDP read loop keeps it, one for the
	// loop, and the answer goes into a buffer kept from batch to batch.
	parsed := new(dnswire.Msg)
	buf := make([]byte, 0, pooledMsgSize)
	b.ReportAllocs()
	start := time.Now()
	for b.Loop() {
		t0 := time.Now()
		var perr error
		*parsed, perr = dnswire.Parse(q)
		r, done := s.early(parsed, perr, protoUDP, buf[:0])
		if !done || r.rcode != dns.RcodeSuccess {
			b.Fatal("not a hit")
		}
		s.m.done(protoUDP, t0, &r)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "queries/s")
}

// routed puts up behind a router as the sidecar builds it in a pod: up for
// UPSTREAMS, a cluster route to another upstream.
func routed(b *testing.B, up upstream.Upstream) upstream.Upstream {
	r, err := router.New(router.Options{
		Default: up,
		Routes: []router.RouteOptions{{Name: "cluster", Zones: []string{"cluster.local", "ec2.internal"},
			Upstream: &staticUpstream{answer: up.(*staticUpstream).answer}, Cluster: true}},
		LocalReverse: true,
		UDPSize:      1232,
		Registerer:   prometheus.NewRegistry(),
	})
	if err != nil {
		b.Fatal(err)
	}
	return r
}

// BenchmarkUDPRelay measures the whole UDP path over loopback sockets:
// clients send, the server's readers receive, answer through the upstream
// interface and write back. Clients run in parallel, each with one query
// outstanding on its own socket. cpu-µs/query is the CPU time of the whole
// process (clients included, so an upper bound for the server) per query.
func BenchmarkUDPRelay(b *testing.B) {
	q, up := benchQuery(b)
	benchUDP(b, q, up, nil)
}

// BenchmarkUDPRelayDoT is BenchmarkUDPRelay through the real path: the
// DoT client (two pipelined TLS connections) and an in-process DoT server
// answering without decoding. Its CPU figure includes the DoT server's.
func BenchmarkUDPRelayDoT(b *testing.B) {
	q, _ := benchQuery(b)
	ds := dnstest.New(b, dnstest.Options{Raw: dnstest.ReflectRaw})
	opts := testDoTOptions(ds, slog.New(slog.DiscardHandler))
	opts.PoolSize = 2 // pipelined over two connections, as the sidecar runs
	d, err := upstream.NewDoT(opts)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	benchUDP(b, q, d, nil)
}

// BenchmarkUDPRelayRouted is BenchmarkUDPRelay through the router.
func BenchmarkUDPRelayRouted(b *testing.B) {
	q, up := benchQuery(b)
	benchUDP(b, q, routed(b, up), nil)
}

// BenchmarkUDPCacheHit is BenchmarkUDPRelay with the cache in front of the
// router: the first query fills it, every other one is a hit, answered by
// the read loop with the other answers of its batch in one sendmmsg.
func BenchmarkUDPCacheHit(b *testing.B) {
	q, up := benchQuery(b)
	c := newCache(b, up)
	benchUDP(b, q, c, c)
}

// benchUDP runs the UDP benchmarks: a server on loopback relaying through
// up, answering hits from cache when it is not nil.
func benchUDP(b *testing.B, q []byte, up upstream.Upstream, cache Cache) {
	s, err := New(testOptions(Options{
		BindAddrs: []netip.Addr{loopback4}, BindExplicit: true, Proto: "udp",
		Upstream: up, Cache: cache, Logger: slog.New(slog.DiscardHandler), Registerer: prometheus.NewRegistry(),
	}))
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start(); err != nil {
		b.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	addr := s.Addrs()[0].(*net.UDPAddr)

	var failed atomic.Int64
	b.SetParallelism(8) // 8 × GOMAXPROCS clients keep the server busy
	b.ReportAllocs()
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.DialUDP("udp", nil, addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		msg := append([]byte(nil), q...)
		buf := make([]byte, 2048)
		for pb.Next() {
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			if _, err := c.Write(msg); err != nil {
				failed.Add(1)
				continue
			}
			if _, err := c.Read(buf); err != nil {
				failed.Add(1) // lost under overload: counted, not fatal
			}
		}
	})
	elapsed := time.Since(start)
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(syscall.TimevalToNsec(ru1.Utime) - syscall.TimevalToNsec(ru0.Utime) +
		syscall.TimevalToNsec(ru1.Stime) - syscall.TimevalToNsec(ru0.Stime))
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "queries/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/query")
	if n := failed.Load(); n > int64(b.N)/100 {
		b.Fatalf("%d of %d queries got no answer", n, b.N)
	}
}
