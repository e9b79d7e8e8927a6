package upstream

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetricsInitAndLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	const name = "192.0.2.53:853#dns.test"
	m.Init(name)
	m.InitHTTP(name) // as a DoH upstream does

	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	// Every family has a series for the upstream before anything happens.
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"request_duration_seconds", "connections_open", "connections_opened_total",
		"tls_handshake_failures_total", "pin_failures_total", "mismatched_responses_total",
		"requests_resent_total", "retries_total", "failovers_total", "health_state",
		"health_check_failures_total", "http_errors_total",
	}
	seen := map[string]int{}
	for _, f := range families {
		short := strings.TrimPrefix(f.GetName(), "dot_sidecar_upstream_")
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == "upstream" && l.GetValue() == name {
					seen[short]++
				}
			}
		}
	}
	for _, w := range want {
		if seen[w] == 0 {
			t.Errorf("no %s series for %s after Init", w, name)
		}
	}
	if got := seen["request_duration_seconds"]; got != len(initRcodes) {
		t.Errorf("%d request_duration_seconds series, want one per initial rcode (%d)", got, len(initRcodes))
	}
	if got := testutil.ToFloat64(m.HealthState.WithLabelValues(name)); got != 1 {
		t.Errorf("health_state starts at %v, want 1", got)
	}
}
