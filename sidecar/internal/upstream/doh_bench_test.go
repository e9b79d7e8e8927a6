//go:build unix

package upstream

import (
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

// BenchmarkExchangeUnbound measures the DoT and DoH clients against a real
// Unbound (its tls-port and its https-port, nghttp2), another process, so
// that the CPU per query reported is the client's alone, unlike
// BenchmarkExchange's, whose in-process server shares it. 100 queries per
// GOMAXPROCS are in flight, about what the harness's dnsperf keeps. Run with
// -cpu 1 (the sidecar's default) and -cpuprofile to see where a DoH query's
// time goes beside a DoT one's.
func BenchmarkExchangeUnbound(b *testing.B) {
	u := unboundtest.Start(b, unboundtest.Options{Names: 1000, HTTPS: true, IncomingNumTCP: 1000})
	for _, tr := range transports {
		b.Run(tr, func(b *testing.B) {
			o := DoTOptions{
				Addr: netip.MustParseAddrPort(u.Addr), ServerName: u.ServerName, Trust: NewTrust(u.CAPool, nil),
				PoolSize: 2, DialTimeout: 2 * time.Second, IdleTimeout: 30 * time.Second, MaxAge: 5 * time.Minute,
				MaxInFlightPerConn: 1024, QueryTimeout: 2 * time.Second, Logger: testLogger(),
				Metrics: NewMetrics(prometheus.NewRegistry()),
			}
			var d Upstream
			var err error
			if tr == "doh" {
				o.Addr = netip.MustParseAddrPort(u.HTTPSAddr)
				d, err = NewDoH(DoHOptions{DoTOptions: o, Path: unboundtest.HTTPPath})
			} else {
				d, err = NewDoT(o)
			}
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = d.Close() })
			queries := make([]dnswire.Msg, len(u.Names))
			for i, r := range u.Names {
				queries[i] = packQuery(b, r.Name, dns.TypeA)
			}
			benchQueries(b, d, queries, 100)
		})
	}
}
