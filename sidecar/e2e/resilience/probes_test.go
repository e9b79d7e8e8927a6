package resilience

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// The probe endpoints answer as docs/operations.md documents, and /metrics carries
// every documented series from start-up, at zero before anything happened,
// with names that pass promlint.
func TestProbesAndMetricsAtStart(t *testing.T) {
	t.Parallel()
	a := dnstest.New(t, dnstest.Options{})
	b := dnstest.New(t, dnstest.Options{})
	s := startSidecar(t, upstreamEnv(t, a, b)...)

	for _, p := range []struct {
		path string
		code int
		body string
	}{
		{"/livez", http.StatusOK, "ok"},
		{"/startupz", http.StatusOK, "ok"},
		{"/readyz", http.StatusOK, "ok"},
	} {
		code, body := s.Get(p.path)
		if code != p.code || strings.TrimSpace(body) != p.body {
			t.Errorf("GET %s: %d %q, want %d %q", p.path, code, body, p.code, p.body)
		}
	}

	fams := s.metrics(t)
	type series struct {
		name   string
		labels []string
		want   float64 // at start
	}
	want := []series{
		{"dot_sidecar_build_info", nil, 1},
		{"dot_sidecar_server_tcp_connections_refused_total", nil, 0},
		{"dot_sidecar_cache_requests_total", nil, 0},
	}
	for _, typ := range []string{"success", "denial"} {
		want = append(want,
			series{"dot_sidecar_cache_hits_total", []string{"type", typ}, 0},
			series{"dot_sidecar_cache_entries", []string{"type", typ}, 0})
	}
	for _, proto := range []string{"udp", "tcp"} {
		for _, rc := range []string{"NOERROR", "SERVFAIL", "NXDOMAIN", "REFUSED", "FORMERR"} {
			want = append(want, series{"dot_sidecar_server_queries_total", []string{"proto", proto, "rcode", rc}, 0})
		}
		want = append(want, series{"dot_sidecar_server_truncated_total", []string{"proto", proto}, 0})
	}
	for _, srv := range []*dnstest.Server{a, b} {
		u := []string{"upstream", upstreamName(srv)}
		want = append(want,
			series{"dot_sidecar_upstream_request_duration_seconds", append(u, "rcode", "NOERROR"), 0},
			series{"dot_sidecar_upstream_request_duration_seconds", append(u, "rcode", "SERVFAIL"), 0},
			series{"dot_sidecar_upstream_retries_total", u, 0},
			series{"dot_sidecar_upstream_failovers_total", u, 0},
			series{"dot_sidecar_upstream_health_state", u, 1},
			series{"dot_sidecar_upstream_health_check_failures_total", u, 0},
			series{"dot_sidecar_upstream_connections_open", u, 0},
			series{"dot_sidecar_upstream_connections_opened_total", u, 0},
			series{"dot_sidecar_upstream_tls_handshake_failures_total", u, 0},
			series{"dot_sidecar_upstream_pin_failures_total", u, 0},
			series{"dot_sidecar_upstream_mismatched_responses_total", u, 0},
		)
	}
	for _, f := range []string{"ca", "pins"} {
		want = append(want,
			series{"dot_sidecar_upstream_trust_reloads_total", []string{"file", f}, 0},
			series{"dot_sidecar_upstream_trust_reload_errors_total", []string{"file", f}, 0})
	}
	for _, w := range want {
		v, ok := metricValue(fams, w.name, w.labels...)
		if !ok {
			t.Errorf("no series %s%v at start", w.name, w.labels)
		} else if v != w.want {
			t.Errorf("%s%v = %v at start, want %v", w.name, w.labels, v, w.want)
		}
	}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_cpu_seconds_total",
		"process_resident_memory_bytes", "process_open_fds"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("no %s: runtime collectors missing", name)
		}
	}

	_, body := s.Get("/metrics")
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "dot_sidecar_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}

	// A few answers move the query, latency and connection series; each
	// name is asked for once, so that none is answered from the cache.
	for i := range 5 {
		for _, netw := range []string{"udp", "tcp"} {
			name := fmt.Sprintf("m%d-%s.example.", i, netw)
			r, err := ask(s.DNS, netw, name, false, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkA(r, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	fams = s.metrics(t)
	for _, w := range []series{
		{"dot_sidecar_server_queries_total", []string{"proto", "udp", "rcode", "NOERROR"}, 5},
		{"dot_sidecar_server_queries_total", []string{"proto", "tcp", "rcode", "NOERROR"}, 5},
		{"dot_sidecar_upstream_request_duration_seconds", []string{"upstream", upstreamName(a), "rcode", "NOERROR"}, 10},
		{"dot_sidecar_cache_requests_total", nil, 10},
		{"dot_sidecar_cache_entries", []string{"type", "success"}, 10},
		{"dot_sidecar_upstream_connections_opened_total", []string{"upstream", upstreamName(a)}, 1},
		{"dot_sidecar_upstream_connections_open", []string{"upstream", upstreamName(a)}, 1},
	} {
		if v, _ := metricValue(fams, w.name, w.labels...); v != w.want {
			t.Errorf("%s%v = %v after the queries, want %v", w.name, w.labels, v, w.want)
		}
	}
}

// Upstream faults move the metrics that describe them, and clients get
// the documented answers.
func TestFaultsMoveMetrics(t *testing.T) {
	t.Run("failover, health, then all down", func(t *testing.T) {
		t.Parallel()
		a := dnstest.New(t, dnstest.Options{})
		b := dnstest.New(t, dnstest.Options{})
		s := startSidecar(t, upstreamEnv(t, a, b)...)
		if r, err := ask(s.DNS, "udp", "first.example.", false, 2*time.Second); err != nil || checkA(r, "first.example.") != nil {
			t.Fatalf("first query: %v %v", r, err)
		}
		// The primary dies: queries keep being answered by the other.
		_ = a.Close()
		for i := range 10 {
			name := fmt.Sprintf("f%d.example.", i)
			r, err := ask(s.DNS, "udp", name, false, 3*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkA(r, name); err != nil {
				t.Fatalf("after the primary died: %v", err)
			}
		}
		ua, ub := upstreamName(a), upstreamName(b)
		s.eventuallyMetric(t, 2*time.Second, "dead primary marked down", func(v float64) bool { return v == 0 },
			"dot_sidecar_upstream_health_state", "upstream", ua)
		s.eventuallyMetric(t, 3*time.Second, "its probes fail", func(v float64) bool { return v > 0 },
			"dot_sidecar_upstream_health_check_failures_total", "upstream", ua)
		fams := s.metrics(t)
		if v, _ := metricValue(fams, "dot_sidecar_upstream_failovers_total", "upstream", ua); v == 0 {
			t.Error("failovers_total from the dead primary = 0")
		}
		if v, _ := metricValue(fams, "dot_sidecar_upstream_retries_total", "upstream", ub); v == 0 {
			t.Error("retries_total to the survivor = 0")
		}
		if v, _ := metricValue(fams, "dot_sidecar_upstream_connections_open", "upstream", ua); v != 0 {
			t.Errorf("connections_open to the dead primary = %v", v)
		}

		// Then the other dies: once both are marked down, SERVFAIL with
		// EDE 22 comes at once; readiness is not tied to upstreams.
		_ = b.Close()
		deadline := time.Now().Add(5 * time.Second)
		for {
			fams := s.metrics(t)
			if v, _ := metricValue(fams, "dot_sidecar_upstream_health_state", "upstream", ub); v == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("second upstream not marked down")
			}
			_, _ = ask(s.DNS, "udp", "dying.example.", false, 3*time.Second)
		}
		var slowest time.Duration
		for i := range 20 {
			start := time.Now()
			r, err := ask(s.DNS, "udp", fmt.Sprintf("down%d.example.", i), true, 2*time.Second)
			slowest = max(slowest, time.Since(start))
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != dns.RcodeServerFailure || ede(r) != int(dns.ExtendedErrorCodeNoReachableAuthority) {
				t.Fatalf("all down: rcode %s EDE %d, want SERVFAIL with EDE 22", dns.RcodeToString[r.Rcode], ede(r))
			}
		}
		t.Logf("all down: slowest SERVFAIL over UDP %s", slowest)
		if slowest > 500*time.Millisecond {
			t.Errorf("all down: slowest SERVFAIL took %s, want ≤ 500ms", slowest)
		}
		if code, body := s.Get("/readyz"); code != http.StatusOK {
			t.Errorf("/readyz %d %q with upstreams down and READY_REQUIRES_UPSTREAM off, want 200", code, body)
		}
		if v, _ := metricValue(s.metrics(t), "dot_sidecar_server_queries_total", "proto", "udp", "rcode", "SERVFAIL"); v < 20 {
			t.Errorf("queries_total{udp,SERVFAIL} = %v, want ≥ 20", v)
		}
	})

	t.Run("pin mismatch", func(t *testing.T) {
		t.Parallel()
		srv := dnstest.New(t, dnstest.Options{})
		other := dnstest.New(t, dnstest.Options{})
		s := startSidecar(t, append(upstreamEnv(t, srv), "TLS_PINS="+other.LeafPin, "RETRY_MAX_ATTEMPTS=1")...)
		r, err := ask(s.DNS, "udp", "pinned.example.", true, 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if r.Rcode != dns.RcodeServerFailure || ede(r) != int(dns.ExtendedErrorCodeNetworkError) {
			t.Fatalf("rcode %s EDE %d, want SERVFAIL with EDE 23", dns.RcodeToString[r.Rcode], ede(r))
		}
		u := upstreamName(srv)
		fams := s.metrics(t)
		for _, name := range []string{"dot_sidecar_upstream_pin_failures_total", "dot_sidecar_upstream_tls_handshake_failures_total"} {
			if v, _ := metricValue(fams, name, "upstream", u); v < 1 {
				t.Errorf("%s = %v, want ≥ 1", name, v)
			}
		}
		if v, _ := metricValue(fams, "dot_sidecar_upstream_connections_opened_total", "upstream", u); v != 0 {
			t.Errorf("connections_opened_total = %v with a wrong pin", v)
		}
	})

	t.Run("mismatched responses", func(t *testing.T) {
		t.Parallel()
		srv := dnstest.New(t, dnstest.Options{})
		srv.Behavior.SetMangle(dnstest.MangleID, true)
		s := startSidecar(t, upstreamEnv(t, srv)...)
		for i := range 3 {
			name := fmt.Sprintf("mm%d.example.", i)
			r, err := ask(s.DNS, "udp", name, false, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if err := checkA(r, name); err != nil {
				t.Fatal(err)
			}
		}
		s.eventuallyMetric(t, 2*time.Second, "spoofed responses counted", func(v float64) bool { return v == 3 },
			"dot_sidecar_upstream_mismatched_responses_total", "upstream", upstreamName(srv))
	})

	t.Run("upstream SERVFAIL passed on", func(t *testing.T) {
		t.Parallel()
		srv := dnstest.New(t, dnstest.Options{Handler: func(q *dns.Msg) *dns.Msg {
			r := new(dns.Msg)
			r.SetRcode(q, dns.RcodeServerFailure)
			return r
		}})
		s := startSidecar(t, upstreamEnv(t, srv)...)
		for i := range 5 { // more than HEALTH_MAX_FAILS
			r, err := ask(s.DNS, "udp", fmt.Sprintf("sf%d.example.", i), false, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != dns.RcodeServerFailure || ede(r) != -1 {
				t.Fatalf("rcode %s EDE %d, want the upstream's own SERVFAIL", dns.RcodeToString[r.Rcode], ede(r))
			}
		}
		u := upstreamName(srv)
		fams := s.metrics(t)
		if v, _ := metricValue(fams, "dot_sidecar_upstream_health_state", "upstream", u); v != 1 {
			t.Errorf("health_state = %v after upstream SERVFAILs, want 1", v)
		}
		if v, _ := metricValue(fams, "dot_sidecar_upstream_request_duration_seconds", "upstream", u, "rcode", "SERVFAIL"); v != 5 {
			t.Errorf("request_duration_seconds{SERVFAIL} count = %v, want 5", v)
		}
		if v, _ := metricValue(fams, "dot_sidecar_upstream_retries_total", "upstream", u); v != 0 {
			t.Errorf("retries_total = %v, want 0", v)
		}
		if got := srv.Queries(); got != 5 {
			t.Errorf("upstream saw %d queries, want 5", got)
		}
	})

	t.Run("truncation", func(t *testing.T) {
		t.Parallel()
		srv := dnstest.New(t, dnstest.Options{Handler: func(q *dns.Msg) *dns.Msg {
			r := new(dns.Msg)
			r.SetReply(q)
			for i := range 20 {
				r.Answer = append(r.Answer, &dns.TXT{
					Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
					Txt: []string{fmt.Sprintf("%02d-%s", i, strings.Repeat("x", 100))},
				})
			}
			return r
		}})
		s := startSidecar(t, upstreamEnv(t, srv)...)
		m := new(dns.Msg)
		m.SetQuestion("big.example.", dns.TypeTXT)
		r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, s.DNS)
		if err != nil {
			t.Fatal(err)
		}
		if !r.Truncated {
			t.Fatalf("a 2 KB answer over UDP without EDNS came without TC (%d records)", len(r.Answer))
		}
		s.eventuallyMetric(t, 2*time.Second, "truncation counted", func(v float64) bool { return v == 1 },
			"dot_sidecar_server_truncated_total", "proto", "udp")
	})

	t.Run("TCP connections over the limit", func(t *testing.T) {
		t.Parallel()
		srv := dnstest.New(t, dnstest.Options{})
		s := startSidecar(t, append(upstreamEnv(t, srv), "TCP_MAX_CONNS=1")...)
		c1, err := dns.Dial("tcp", s.DNS)
		if err != nil {
			t.Fatal(err)
		}
		defer c1.Close()
		m := new(dns.Msg)
		m.SetQuestion("held.example.", dns.TypeA)
		if err := c1.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
		if _, err := c1.ReadMsg(); err != nil { // the first connection is in
			t.Fatal(err)
		}
		c2, err := dns.Dial("tcp", s.DNS)
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		s.eventuallyMetric(t, 2*time.Second, "second connection refused", func(v float64) bool { return v == 1 },
			"dot_sidecar_server_tcp_connections_refused_total")
	})
}
