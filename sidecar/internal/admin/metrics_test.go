package admin_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/admin"
)

// scrape returns the exposition lines of /metrics as a set.
func scrape(t *testing.T, a *admin.Admin) map[string]bool {
	t.Helper()
	code, body := get(t, "http://"+a.Addr()+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d %q", code, body)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(body, "\n") {
		lines[l] = true
	}
	return lines
}

// hasMetric reports whether some sample line of the family name exists.
func hasMetric(lines map[string]bool, name string) bool {
	for l := range lines {
		if strings.HasPrefix(l, name+" ") || strings.HasPrefix(l, name+"{") {
			return true
		}
	}
	return false
}

func TestMetricsEndpoint(t *testing.T) {
	a, reg := startAdmin(t, admin.Options{Version: "1.2.3"})
	if err := admin.RegisterRuntimeCollectors(reg); err != nil {
		t.Fatal(err)
	}
	// Another package's collector on the same registry is served too.
	things := prometheus.NewCounter(prometheus.CounterOpts{Name: "dot_sidecar_test_things_total", Help: "Things."})
	reg.MustRegister(things)
	things.Add(7)

	lines := scrape(t, a)
	for _, l := range []string{
		`dot_sidecar_build_info{version="1.2.3"} 1`,
		`dot_sidecar_admin_live 1`,
		`dot_sidecar_admin_started 0`,
		`dot_sidecar_admin_ready 0`,
		`dot_sidecar_admin_upstream_readiness_changes_total 0`,
		`dot_sidecar_admin_connections_evicted_total 0`,
		`dot_sidecar_test_things_total 7`,
	} {
		if !lines[l] {
			t.Errorf("/metrics lacks %q", l)
		}
	}
	for _, name := range []string{
		"go_goroutines", "go_memstats_alloc_bytes", "go_gc_duration_seconds",
		"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
		"promhttp_metric_handler_requests_total",
	} {
		if !hasMetric(lines, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}

	a.SetStarted()
	lines = scrape(t, a)
	for _, l := range []string{`dot_sidecar_admin_started 1`, `dot_sidecar_admin_ready 1`} {
		if !lines[l] {
			t.Errorf("after SetStarted, /metrics lacks %q", l)
		}
	}
	a.SetShuttingDown()
	if lines := scrape(t, a); !lines[`dot_sidecar_admin_ready 0`] {
		t.Error("after SetShuttingDown, /metrics lacks dot_sidecar_admin_ready 0")
	}

	if err := admin.RegisterRuntimeCollectors(reg); err == nil {
		t.Error("registering the runtime collectors twice succeeded, want an error")
	}
}

// failingCollector always fails to collect, like a collector whose source
// (a /proc file, a socket) has become unreadable.
type failingCollector struct{ desc *prometheus.Desc }

func (c failingCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c failingCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.NewInvalidMetric(c.desc, errors.New("source unreadable"))
}

// A broken collector must not take the other series down with it, and the
// failure must be visible in a counter.
func TestMetricsSurviveFailingCollector(t *testing.T) {
	a, reg := startAdmin(t, admin.Options{})
	reg.MustRegister(failingCollector{prometheus.NewDesc("dot_sidecar_test_broken", "Broken.", nil, nil)})

	lines := scrape(t, a)
	if !lines[`dot_sidecar_admin_live 1`] {
		t.Error("/metrics with a failing collector lacks the healthy series")
	}
	if hasMetric(lines, "dot_sidecar_test_broken") {
		t.Error("/metrics serves a sample of the failing collector")
	}
	// The counter moves after each gathering, so the second scrape shows the
	// first one's failure.
	if lines := scrape(t, a); !lines[`promhttp_metric_handler_errors_total{cause="gathering"} 1`] {
		t.Error(`/metrics lacks promhttp_metric_handler_errors_total{cause="gathering"} counting the failure`)
	}
}

// Every metric the admin listener exports, the runtime collectors included,
// passes promlint.
func TestMetricNamesLint(t *testing.T) {
	_, reg := startAdmin(t, admin.Options{Version: "test"})
	if err := admin.RegisterRuntimeCollectors(reg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var ours int
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "dot_sidecar_") {
			ours++
		}
	}
	if ours < 5 {
		t.Fatalf("gathered %d dot_sidecar_ families, want the admin ones", ours)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}
