package server

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// TestMetricsLint runs promlint over every collector of the package.
func TestMetricsLint(t *testing.T) {
	ts := startServer(t, Options{})
	mfs, err := ts.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestMetricsInitialised checks that the series dashboards rely on exist,
// at zero, before any query, and that they then move.
func TestMetricsInitialised(t *testing.T) {
	ts := startServer(t, Options{})
	mfs, err := ts.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			series[mf.GetName()+"{"+strings.Join(labels, ",")+"}"] = true
		}
	}
	for _, want := range []string{
		"dot_sidecar_server_queries_total{proto=udp,rcode=NOERROR}",
		"dot_sidecar_server_queries_total{proto=tcp,rcode=SERVFAIL}",
		"dot_sidecar_server_queries_total{proto=udp,rcode=BADVERS}",
		"dot_sidecar_server_request_duration_seconds{proto=tcp}",
		"dot_sidecar_server_truncated_total{proto=udp}",
		"dot_sidecar_server_tcp_connections_refused_total{}",
		"dot_sidecar_server_tcp_connections_open{}",
		"dot_sidecar_server_malformed_queries_total{}",
		"dot_sidecar_server_inflight_queries{}",
	} {
		if !series[want] {
			t.Errorf("series %s missing at start", want)
		}
	}

	ask(t, "udp", ts.addr(t, "udp", loopback4), newQuery("www.example.", dns.TypeA))
	ask(t, "tcp", ts.addr(t, "tcp", loopback4), newQuery("err-tls.example.", dns.TypeA))
	ask(t, "udp", ts.addr(t, "udp", loopback4), newQuery("refused.example.", dns.TypeA))
	for _, c := range []struct {
		proto, rcode string
		want         float64
	}{{"udp", "NOERROR", 2}, {"tcp", "SERVFAIL", 1}, {"tcp", "NOERROR", 0}} {
		if got := testutil.ToFloat64(ts.m.queries.WithLabelValues(c.proto, c.rcode)); got != c.want {
			t.Errorf("queries_total{proto=%s,rcode=%s} = %v, want %v", c.proto, c.rcode, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(ts.m.queries); n != 2*len(initRcodes) {
		t.Errorf("%d queries_total series, want %d", n, 2*len(initRcodes))
	}
	if got := rcodeName(4000); got != "OTHER" {
		t.Errorf("rcodeName(4000) = %q, want OTHER (bounded labels)", got)
	}
}
