package manifests

import (
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// metricRow is a row of the metrics table of docs/operations.md:
// | `name{label,...}` | type | meaning |
var metricRow = regexp.MustCompile("^\\| `(dot_sidecar_[a-z_]+)(?:\\{([a-z_,]+)\\})?` \\| (counter|gauge|histogram) \\| .+ \\|$")

// TestDocsMetricsTable keeps the metrics reference of docs/operations.md
// equal to what the sidecar registers: every dot_sidecar_* family, with its
// type and label names, and nothing else.
func TestDocsMetricsTable(t *testing.T) {
	t.Parallel()
	type fam struct {
		typ    string
		labels string
	}
	documented := map[string]fam{}
	for i, line := range prose(readDoc(t, "docs/operations.md")) {
		if !strings.HasPrefix(line, "| `dot_sidecar_") {
			continue
		}
		m := metricRow.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("docs/operations.md:%d: metric row not in the form | `name{labels}` | counter|gauge|histogram | meaning |:\n%s", i+1, line)
			continue
		}
		labels := strings.Split(m[2], ",")
		sort.Strings(labels)
		documented[m[1]] = fam{m[3], strings.Trim(strings.Join(labels, ","), ",")}
	}
	registered := map[string]fam{}
	for name, f := range registeredFamilies(t) {
		if !strings.HasPrefix(name, "dot_sidecar_") {
			continue
		}
		labels := sortedKeys(f.Labels)
		registered[name] = fam{strings.ToLower(f.Type.String()), strings.Join(labels, ",")}
	}
	for name, r := range registered {
		d, ok := documented[name]
		switch {
		case !ok:
			labels := ""
			if r.labels != "" {
				labels = "{" + r.labels + "}"
			}
			t.Errorf("docs/operations.md lacks | `%s%s` | %s | ... |", name, labels, r.typ)
		case d != r:
			t.Errorf("docs/operations.md documents %s as %s {%s}; it is registered as %s {%s}", name, d.typ, d.labels, r.typ, r.labels)
		}
	}
	for name := range documented {
		if _, ok := registered[name]; !ok {
			t.Errorf("docs/operations.md documents %s, which the sidecar does not register", name)
		}
	}
}

var metricName = regexp.MustCompile(`\bdot_sidecar_[a-z_]+[a-z]`)

// TestDocsNameOnlyRegisteredMetrics: a metric named anywhere in the docs
// (a histogram's _bucket, _sum and _count series included) is one the
// sidecar registers.
func TestDocsNameOnlyRegisteredMetrics(t *testing.T) {
	t.Parallel()
	fams := registeredFamilies(t)
	series := seriesNames(fams)
	for _, file := range docFiles(t) {
		for i, line := range strings.Split(readDoc(t, file), "\n") {
			for _, name := range metricName.FindAllString(line, -1) {
				_, family := fams[name]
				if _, ok := series[name]; !ok && !family {
					t.Errorf("%s:%d names %s, which the sidecar does not export", file, i+1, name)
				}
			}
		}
	}
}

// registeredFamilies is exportedMetrics plus the trust-reload metrics, which
// the sidecar registers beside the upstream package's own.
func registeredFamilies(t *testing.T) map[string]family {
	t.Helper()
	fams := exportedMetrics(t)
	reg := prometheus.NewRegistry()
	upstream.NewReloadMetrics(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		f := family{Type: mf.GetType(), Labels: map[string]map[string]bool{}}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if f.Labels[l.GetName()] == nil {
					f.Labels[l.GetName()] = map[string]bool{}
				}
				f.Labels[l.GetName()][l.GetValue()] = true
			}
		}
		fams[mf.GetName()] = f
	}
	return fams
}
