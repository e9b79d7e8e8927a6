package resilience

import (
	"fmt"
	"testing"
	"time"

	"github.com/miekg/dns"

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
