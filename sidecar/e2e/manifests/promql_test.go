package manifests

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// promRefs is what a dashboard query refers to.
type promRefs struct {
	metrics []string    // series names selected
	labels  []string    // label names in matchers and in by/without/on/ignoring/group_* lists
	equals  [][2]string // label="value" matchers whose value is a literal (no $variable)
}

// The PromQL functions and aggregations the dashboard may call; anything else
// followed by "(" is a typo or a function this check does not know.
var promFunctions = map[string]bool{
	"sum": true, "avg": true, "min": true, "max": true, "count": true, "topk": true, "bottomk": true,
	"quantile": true, "stddev": true, "rate": true, "irate": true, "increase": true, "delta": true,
	"deriv": true, "histogram_quantile": true, "clamp_min": true, "clamp_max": true, "abs": true,
	"absent": true, "avg_over_time": true, "max_over_time": true, "min_over_time": true,
	"sum_over_time": true, "vector": true, "scalar": true,
}

var promKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true}

var (
	promString       = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promMatcherValue = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
	promBraces       = regexp.MustCompile(`\{[^{}]*\}`)
	promMatcherName  = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)`)
	promRange        = regexp.MustCompile(`\[[^\[\]]*\]`)
	promGrouping     = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)`)
	promNumber       = regexp.MustCompile(`\b[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?\b`)
	promIdent        = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
)

// parsePromQL finds the metrics and labels a query refers to. It is not a
// PromQL parser: it knows the shapes of query a dashboard uses (selectors,
// ranges, aggregations with grouping, functions, binary operators) and
// rejects unbalanced brackets and unknown functions, which is what a typo
// usually produces.
func parsePromQL(expr string) (promRefs, error) {
	var r promRefs
	if err := balanced(expr); err != nil {
		return r, err
	}
	for _, m := range promMatcherValue.FindAllStringSubmatch(expr, -1) {
		if m[2] == "=" && !strings.Contains(m[3], "$") {
			r.equals = append(r.equals, [2]string{m[1], m[3]})
		}
	}
	s := promString.ReplaceAllString(expr, `""`)
	s = promBraces.ReplaceAllStringFunc(s, func(b string) string {
		for _, m := range promMatcherName.FindAllStringSubmatch(b, -1) {
			r.labels = append(r.labels, m[1])
		}
		return " "
	})
	s = promRange.ReplaceAllString(s, " ")
	s = promGrouping.ReplaceAllStringFunc(s, func(g string) string {
		for _, l := range strings.Split(promGrouping.FindStringSubmatch(g)[1], ",") {
			if l = strings.TrimSpace(l); l != "" {
				r.labels = append(r.labels, l)
			}
		}
		return " "
	})
	s = promNumber.ReplaceAllString(s, " ")
	for _, loc := range promIdent.FindAllStringIndex(s, -1) {
		word := s[loc[0]:loc[1]]
		switch next := strings.TrimLeft(s[loc[1]:], " \t\n"); {
		case strings.HasPrefix(next, "("):
			if !promFunctions[word] {
				return r, fmt.Errorf("unknown function %q", word)
			}
		case promKeywords[word]:
		default:
			r.metrics = append(r.metrics, word)
		}
	}
	return r, nil
}

// balanced checks that (), {} and [] nest properly outside string literals.
func balanced(expr string) error {
	s := promString.ReplaceAllString(expr, `""`)
	pairs := map[rune]rune{')': '(', '}': '{', ']': '['}
	var stack []rune
	for _, c := range s {
		switch c {
		case '(', '{', '[':
			stack = append(stack, c)
		case ')', '}', ']':
			if len(stack) == 0 || stack[len(stack)-1] != pairs[c] {
				return fmt.Errorf("unbalanced %q", c)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if len(stack) > 0 {
		return fmt.Errorf("unclosed %q", stack[len(stack)-1])
	}
	return nil
}

func TestParsePromQL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		expr    string
		metrics []string
		labels  []string
		equals  [][2]string
		err     string
	}{
		{
			expr:    `sum by (rcode) (rate(dot_sidecar_server_queries_total{namespace=~"$namespace"}[$__rate_interval]))`,
			metrics: []string{"dot_sidecar_server_queries_total"},
			labels:  []string{"namespace", "rcode"},
		},
		{
			expr:    `histogram_quantile(0.99, sum by (le, upstream) (rate(x_bucket{a="b", c!="d"}[5m])))`,
			metrics: []string{"x_bucket"},
			labels:  []string{"a", "c", "le", "upstream"},
			equals:  [][2]string{{"a", "b"}},
		},
		{
			expr:    `sum(rate(q{rcode="SERVFAIL"}[1m])) / sum(rate(q[1m]))`,
			metrics: []string{"q", "q"},
			labels:  []string{"rcode"},
			equals:  [][2]string{{"rcode", "SERVFAIL"}},
		},
		{
			expr:    `topk(10, mem{ns=~"$ns"} and on (instance) info{ns=~"$ns"})`,
			metrics: []string{"mem", "info"},
			labels:  []string{"instance", "ns", "ns"},
		},
		{expr: `1e-9 + 2`, metrics: nil},
		{expr: `sum(rat(x[1m]))`, err: `unknown function "rat"`},
		{expr: `sum(rate(x[1m])`, err: "unclosed"},
		{expr: `x{a="}"}`, metrics: []string{"x"}, labels: []string{"a"}, equals: [][2]string{{"a", "}"}}},
		{expr: `x{a="b"]`, err: "unbalanced"},
	}
	for _, tc := range tests {
		r, err := parsePromQL(tc.expr)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want %q", tc.expr, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.expr, err)
			continue
		}
		slices.Sort(r.labels)
		if !slices.Equal(r.metrics, tc.metrics) || !slices.Equal(r.labels, tc.labels) || !slices.Equal(r.equals, tc.equals) {
			t.Errorf("%q:\n got  %v %v %v\n want %v %v %v", tc.expr, r.metrics, r.labels, r.equals, tc.metrics, tc.labels, tc.equals)
		}
	}
}
