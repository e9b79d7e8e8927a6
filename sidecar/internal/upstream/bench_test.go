//go:build unix

package upstream

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkExchange measures the DoT and DoH clients' relay paths against the
// in-process server answering from wire bytes (dnstest.ReflectRaw), so that
// allocations and CPU are mostly the client's (the server shares the
// process and the cores). Run with -cpu to vary GOMAXPROCS and
// -benchtime to lengthen; qps is the whole system's throughput.
func BenchmarkExchange(b *testing.B) {
	for _, tr := range transports {
		for _, par := range []int{1, 16, 128} {
			b.Run(fmt.Sprintf("%s/goroutines=%dxGOMAXPROCS", tr, par), func(b *testing.B) {
				srv := newTestServer(b, tr, dnstest.Options{Raw: dnstest.ReflectRaw})
				d := newTestUpstream(b, srv, nil)
				// A pool of distinct queries: the same question each time would
				// flatter the matcher.
				queries := make([]dnswire.Msg, 1024)
				for i := range queries {
					queries[i] = packQuery(b, fmt.Sprintf("host%d.bench.example.", i), dns.TypeA)
				}
				// The whole process's CPU, so an upper bound on the client's: the
				// server's TLS and framing (and for DoH its whole HTTP/2 server) are in
				// it too.
				benchQueries(b, d, queries, par)
				b.ReportMetric(float64(srv.Accepted()), "conns")
			})
		}
	}
}

// benchQueries sends queries through d, round robin, from par goroutines
// per GOMAXPROCS, and reports queries per second and the process's CPU per
// query.
func benchQueries(b *testing.B, d Upstream, queries []dnswire.Msg, par int) {
	if _, err := d.Exchange(ctxTimeout(b, time.Second), queries[0]); err != nil {
		b.Fatal(err)
	}
	var next atomic.Uint64
	b.SetParallelism(par)
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0 := time.Now(), processCPU()
	b.RunParallel(func(pb *testing.PB) {
		ctx := ctxTimeout(b, time.Minute)
		for pb.Next() {
			q := queries[next.Add(1)%uint64(len(queries))]
			if _, err := d.Exchange(ctx, q); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "queries/s")
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/query")
}
