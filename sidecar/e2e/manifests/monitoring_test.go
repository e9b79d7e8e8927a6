package manifests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// podMonitor is the part of monitoring.coreos.com/v1 PodMonitor the manifests
// may use. Decoding strictly into it makes it an allow-list: any other field
// (or a misspelt one) fails.
type podMonitor struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		NamespaceSelector struct {
			Any        bool     `json:"any"`
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Selector            metav1.LabelSelector `json:"selector"`
		PodMetricsEndpoints []podMetricsEndpoint `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

type podMetricsEndpoint struct {
	Port          string `json:"port"`
	Path          string `json:"path"`
	Interval      string `json:"interval"`
	ScrapeTimeout string `json:"scrapeTimeout"`
}

func renderedPodMonitor(t *testing.T) podMonitor {
	t.Helper()
	var pms []podMonitor
	for _, o := range render(t, "monitoring") {
		if o.Kind != "PodMonitor" {
			continue
		}
		var pm podMonitor
		if err := yaml.UnmarshalStrict(o.YAML, &pm); err != nil {
			t.Fatalf("PodMonitor uses fields outside the allow-list: %v", err)
		}
		pms = append(pms, pm)
	}
	if len(pms) != 1 {
		t.Fatalf("monitoring renders %d PodMonitors, want 1", len(pms))
	}
	return pms[0]
}

func podMonitorEndpoints(t *testing.T) []podMetricsEndpoint {
	t.Helper()
	return renderedPodMonitor(t).Spec.PodMetricsEndpoints
}

// TestPodMonitorScrapesEveryDotSidecarPod: the PodMonitor selects every pod
// that carries dot-sidecar in every overlay, in any namespace, on a port the
// sidecar container names and that is its admin port.
func TestPodMonitorScrapesEveryDotSidecarPod(t *testing.T) {
	t.Parallel()
	pm := renderedPodMonitor(t)
	if pm.APIVersion != "monitoring.coreos.com/v1" || pm.Metadata.Name == "" {
		t.Errorf("PodMonitor %s %q", pm.APIVersion, pm.Metadata.Name)
	}
	if !pm.Spec.NamespaceSelector.Any {
		t.Error("namespaceSelector.any must be true: dot-sidecar runs in the users' namespaces")
	}
	sel, err := metav1.LabelSelectorAsSelector(&pm.Spec.Selector)
	if err != nil || sel.Empty() {
		t.Fatalf("selector %v: %v", pm.Spec.Selector, err)
	}
	if len(pm.Spec.PodMetricsEndpoints) != 1 {
		t.Fatalf("%d endpoints, want 1", len(pm.Spec.PodMetricsEndpoints))
	}
	ep := pm.Spec.PodMetricsEndpoints[0]
	interval, err1 := time.ParseDuration(ep.Interval)
	timeout, err2 := time.ParseDuration(ep.ScrapeTimeout)
	if err1 != nil || err2 != nil || timeout > interval {
		t.Errorf("interval %q scrapeTimeout %q: want durations, timeout within the interval", ep.Interval, ep.ScrapeTimeout)
	}
	for _, p := range dotSidecarPods(t) {
		if !sel.Matches(labels.Set(p.meta.Labels)) {
			t.Errorf("%s: pod labels %v not selected by %v", p.where, p.meta.Labels, pm.Spec.Selector)
		}
		c := p.container(t, sidecarName)
		cfg := loadSettings(t, p.env(t, c))
		i := slices.IndexFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == ep.Port })
		if i < 0 || c.Ports[i].ContainerPort != portOf(t, cfg.AdminAddress) {
			t.Errorf("%s: the PodMonitor's port %q is not the sidecar's admin port (%s)", p.where, ep.Port, cfg.AdminAddress)
		}
	}
}

// dashboardMustShow are the metric families operators need to see; each must
// be on the dashboard.
var dashboardMustShow = []string{
	"dot_sidecar_server_queries_total",
	"dot_sidecar_server_request_duration_seconds",
	"dot_sidecar_server_truncated_total",
	"dot_sidecar_server_tcp_connections_refused_total",
	"dot_sidecar_server_overloaded_queries_total",
	"dot_sidecar_server_jostled_queries_total",
	"dot_sidecar_server_tcp_connections_closed_unread_total",
	"dot_sidecar_admin_connections_evicted_total",
	"dot_sidecar_cache_requests_total",
	"dot_sidecar_cache_hits_total",
	"dot_sidecar_cache_entries",
	"dot_sidecar_cache_served_stale_total",
	"dot_sidecar_cache_prefetch_total",
	"dot_sidecar_cache_evictions_total",
	"dot_sidecar_cache_drops_total",
	"dot_sidecar_upstream_request_duration_seconds",
	"dot_sidecar_upstream_connections_open",
	"dot_sidecar_upstream_connections_opened_total",
	"dot_sidecar_upstream_tls_handshake_failures_total",
	"dot_sidecar_upstream_pin_failures_total",
	"dot_sidecar_upstream_mismatched_responses_total",
	"dot_sidecar_upstream_retries_total",
	"dot_sidecar_upstream_failovers_total",
	"dot_sidecar_upstream_health_state",
	"dot_sidecar_upstream_health_check_failures_total",
	"dot_sidecar_upstream_marked_down_total",
	"dot_sidecar_upstream_partial_failures_total",
	"dot_sidecar_route_info",
}

// targetLabels are added by Prometheus to every series it scrapes from a pod
// (PodMonitor or the usual prometheus.io annotation job).
var targetLabels = map[string]bool{"namespace": true, "pod": true, "instance": true, "job": true, "container": true}

type dashboard struct {
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID        string `json:"refId"`
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

// TestDashboard parses the Grafana dashboard and checks every query against
// the metrics the sidecar really registers (exportedMetrics): each series,
// label and label value it names must exist.
func TestDashboard(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile(filepath.Join(manifestsDir(t), "monitoring", "dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	if d.UID == "" || d.Title == "" || d.SchemaVersion == 0 {
		t.Errorf("uid %q title %q schemaVersion %d: all needed for import", d.UID, d.Title, d.SchemaVersion)
	}
	series := seriesNames(exportedMetrics(t))
	seen := make(map[string]bool) // series referenced anywhere
	check := func(where, expr, legend string) {
		refs, err := parsePromQL(expr)
		if err != nil {
			t.Errorf("%s: %q: %v", where, expr, err)
			return
		}
		if len(refs.metrics) == 0 {
			t.Errorf("%s: %q names no metric", where, expr)
		}
		allowed := make(map[string]map[string]bool) // label → known values (empty: any)
		for l := range targetLabels {
			allowed[l] = nil
		}
		for _, m := range refs.metrics {
			ls, ok := series[m]
			if !ok {
				t.Errorf("%s: %s is not a metric the sidecar exports", where, m)
				continue
			}
			seen[m] = true
			for l := range ls {
				allowed[l] = nil
			}
		}
		for _, l := range append(refs.labels, legendLabels(legend)...) {
			if _, ok := allowed[l]; !ok {
				t.Errorf("%s: label %q belongs to none of %v", where, l, refs.metrics)
			}
		}
		for _, eq := range refs.equals {
			vals := make(map[string]bool)
			for _, m := range refs.metrics {
				for v := range series[m][eq[0]] {
					vals[v] = true
				}
			}
			if len(vals) > 0 && !vals[eq[1]] {
				t.Errorf("%s: %s=%q: the sidecar exports only %v", where, eq[0], eq[1], sortedKeys(vals))
			}
		}
	}

	ids := make(map[int]bool)
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
			if p.ID == 0 || ids[p.ID] {
				t.Errorf("%s: id missing or used twice", where)
			}
			ids[p.ID] = true
			if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H <= 0 {
				t.Errorf("%s: gridPos %+v outside Grafana's 24 columns", where, p.GridPos)
			}
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
				t.Errorf("%s: datasource must be the ${datasource} variable, so the dashboard imports anywhere", where)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no query", where)
			}
			refIDs := make(map[string]bool)
			for _, tg := range p.Targets {
				if tg.RefID == "" || refIDs[tg.RefID] {
					t.Errorf("%s: refId %q missing or repeated", where, tg.RefID)
				}
				refIDs[tg.RefID] = true
				check(where, tg.Expr, tg.LegendFormat)
			}
		}
	}
	walk(d.Panels)

	hasDatasource := false
	for _, v := range d.Templating.List {
		switch v.Type {
		case "datasource":
			hasDatasource = true
		case "query":
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				var s string
				_ = json.Unmarshal(v.Query, &s)
				q.Query = s
			}
			m := labelValuesQuery.FindStringSubmatch(q.Query)
			if m == nil {
				t.Errorf("variable %s: query %q: want label_values(metric, label)", v.Name, q.Query)
				continue
			}
			check("variable "+v.Name, m[1], "{{"+m[2]+"}}")
		}
	}
	if !hasDatasource {
		t.Error("no datasource variable")
	}

	for _, fam := range dashboardMustShow {
		shown := false
		for m := range seen {
			if m == fam || strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_count"), "_sum") == fam {
				shown = true
			}
		}
		if !shown {
			t.Errorf("the dashboard does not show %s", fam)
		}
	}

	// The ConfigMap for Grafana's dashboard sidecar carries the file as it is.
	for _, o := range render(t, "monitoring") {
		if cm, ok := o.Typed.(*corev1.ConfigMap); ok {
			if cm.Data["dashboard.json"] != string(raw) || cm.Labels["grafana_dashboard"] != "1" {
				t.Errorf("ConfigMap %s does not carry dashboard.json as it is, labelled grafana_dashboard=1", cm.Name)
			}
		}
	}
}

var labelValuesQuery = regexp.MustCompile(`^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)$`)

var legendLabel = regexp.MustCompile(`\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}`)

func legendLabels(legend string) []string {
	var ls []string
	for _, m := range legendLabel.FindAllStringSubmatch(legend, -1) {
		ls = append(ls, m[1])
	}
	return ls
}
