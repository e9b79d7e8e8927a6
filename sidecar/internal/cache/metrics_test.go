package cache

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// TestMetrics: every series a dashboard shows exists at zero from the
// start, and the names pass promlint.
func TestMetrics(t *testing.T) {
	h := newHarness(t, Options{})
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
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
		"dot_sidecar_cache_entries{type=success}", "dot_sidecar_cache_entries{type=denial}",
		"dot_sidecar_cache_hits_total{type=success}", "dot_sidecar_cache_hits_total{type=denial}",
		"dot_sidecar_cache_evictions_total{type=success}", "dot_sidecar_cache_evictions_total{type=denial}",
		"dot_sidecar_cache_requests_total{}", "dot_sidecar_cache_prefetch_total{}",
		"dot_sidecar_cache_served_stale_total{}", "dot_sidecar_cache_drops_total{}",
	} {
		if !series[want] {
			t.Errorf("series %s missing at start", want)
		}
	}
	if len(series) != 10 {
		t.Errorf("%d series: %v", len(series), series)
	}
}
