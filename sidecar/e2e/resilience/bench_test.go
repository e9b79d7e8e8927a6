package resilience

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// BenchmarkAllDownServfail measures what a client waits for its SERVFAIL
// when every upstream is down, through the built binary over UDP on
// loopback: the figure behind "SERVFAIL at once".
func BenchmarkAllDownServfail(b *testing.B) {
	srv := dnstest.New(b, dnstest.Options{})
	env := upstreamEnv(b, srv)
	_ = srv.Close() // its port now refuses connections
	s := startSidecar(b, env...)
	conn, err := dns.Dial("udp", s.DNS)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	q := new(dns.Msg)
	q.SetQuestion("down.example.", dns.TypeA)
	ask := func() *dns.Msg {
		q.Id = dns.Id()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		if err := conn.WriteMsg(q); err != nil {
			b.Fatal(err)
		}
		r, err := conn.ReadMsg()
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, _ := metricValue(s.metrics(b), "dot_sidecar_upstream_health_state", "upstream", upstreamName(srv))
		if v == 0 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatal("upstream not marked down")
		}
		ask()
	}
	b.ResetTimer()
	for b.Loop() {
		if r := ask(); r.Rcode != dns.RcodeServerFailure {
			b.Fatal(fmt.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode]))
		}
	}
}

// BenchmarkCacheMemory fills the built binary's cache with 100,000 answers
// (distinct names, one A record each, asked with EDNS as a pod's resolver
// asks) and reports its resident memory then, beside the same process
// before the queries: what CACHE_SIZE=100000 costs a pod. Run it once
// (-benchtime=1x): each iteration starts its own sidecar.
func BenchmarkCacheMemory(b *testing.B) {
	const entries = 100_000
	srv := dnstest.New(b, dnstest.Options{Raw: dnstest.ReflectRaw})
	for b.Loop() {
		s := startSidecar(b, append(upstreamEnv(b, srv), "CACHE_SIZE="+strconv.Itoa(entries))...)
		idle := procStatus(b, s.Cmd.Process.Pid, "VmRSS")
		var wg sync.WaitGroup
		const clients = 8
		for c := range clients {
			wg.Go(func() {
				conn, err := dns.Dial("udp", s.DNS)
				if err != nil {
					b.Error(err)
					return
				}
				defer conn.Close()
				for i := c; i < entries; i += clients {
					q := new(dns.Msg)
					q.SetQuestion(fmt.Sprintf("host-%d.example.", i), dns.TypeA)
					q.SetEdns0(1232, false)
					_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
					if err := conn.WriteMsg(q); err != nil {
						b.Error(err)
						return
					}
					if r, err := conn.ReadMsg(); err != nil || len(r.Answer) != 1 {
						b.Errorf("host-%d: %v %v", i, r, err)
						return
					}
				}
			})
		}
		wg.Wait()
		kept, _ := metricValue(s.metrics(b), "dot_sidecar_cache_entries", "type", "success")
		if kept < entries*99/100 {
			b.Fatalf("%v entries cached of %d", kept, entries)
		}
		rss, hwm := procStatus(b, s.Cmd.Process.Pid, "VmRSS"), procStatus(b, s.Cmd.Process.Pid, "VmHWM")
		b.ReportMetric(float64(idle)/(1<<20), "idle-RSS-MiB")
		b.ReportMetric(float64(rss)/(1<<20), "RSS-MiB")
		b.ReportMetric(float64(hwm)/(1<<20), "peak-RSS-MiB")
		b.ReportMetric(float64(rss-idle)/kept, "RSS-B/entry")
		_ = s.Stop(testkit.StopGrace)
	}
}

// procStatus reads a size field (VmRSS, VmHWM) of /proc/PID/status, in
// bytes.
func procStatus(b *testing.B, pid int, field string) int64 {
	b.Helper()
	n, err := testkit.ProcSize(pid, field)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// BenchmarkFlood runs each attack of floodCases at full size, and the
// malformed flood of TestMalformedFlood, against the built binary with its
// default settings and reports what the watch saw: the sidecar's peak RSS,
// how names the upstream answers fared (share answered, 99th percentile
// latency), the slowest probe, the most descriptors held and how often the
// upstream was marked down. Each attack runs once per iteration on a fresh
// sidecar; run it with -benchtime 1x.
func BenchmarkFlood(b *testing.B) {
	malformed, _ := malformedFlood(b) // its answers are TestMalformedFlood's to judge
	for _, fc := range append(floodCases(true), malformed) {
		b.Run(strings.ReplaceAll(fc.name, " ", "-"), func(b *testing.B) {
			var worst floodReport
			for b.Loop() {
				b.StopTimer()
				s := startFlooded(b, false)
				b.StartTimer()
				r := watch(b, s, fc.d, func(ctx context.Context) { fc.flood(ctx, s) })
				b.StopTimer()
				b.Logf("%s: %s", fc.name, r)
				_ = s.Stop(testkit.StopGrace)
				worst.merge(r)
				b.StartTimer()
			}
			worst.report(b)
		})
	}
}
