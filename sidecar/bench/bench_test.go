package main

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

const perfUDP = `DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 15353 -d q.txt -l 1 -c 4 -q 20 -t 2
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         73204
  Queries completed:    73200 (99.99%)
  Queries lost:         4 (0.01%)

  Response codes:       NOERROR 36602 (50.00%), SERVFAIL 36598 (50.00%)
  Average packet size:  request 34, response 42
  Run time (s):         1.002941
  Queries per second:   72989.338356

  Average Latency (s):  0.000204 (min 0.000015, max 0.005680)
  Latency StdDev (s):   0.000327

`

// In TCP mode a second block reports connection latency, which must not be
// taken for query latency.
const perfTCP = `Statistics:

  Queries sent:         2000
  Queries completed:    2000 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 2000 (100.00%)
  Average packet size:  request 34, response 42
  Run time (s):         1.055148
  Queries per second:   1895.468693

  Average Latency (s):  0.002376 (min 0.000076, max 0.056066)
  Latency StdDev (s):   0.002600

Connection Statistics:

  Reconnections:        0

  Average Latency (s):  0.001520 (min 0.000650, max 0.002439)
  Latency StdDev (s):   0.000732
`

const perfNone = `Statistics:

  Queries sent:         10
  Queries completed:    0 (0.00%)
  Queries lost:         10 (100.00%)

  Response codes:       
  Run time (s):         3.000000
  Queries per second:   0.000000
`

func TestParseDnsperf(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    perfResult
		wantErr bool
	}{
		{"udp", perfUDP, perfResult{Sent: 73204, Completed: 73200, Lost: 4, QPS: 72989.338356,
			AvgLatency: 204 * time.Microsecond, MaxLatency: 5680 * time.Microsecond,
			Rcodes: map[string]int{"NOERROR": 36602, "SERVFAIL": 36598}}, false},
		{"tcp ignores connection latency", perfTCP, perfResult{Sent: 2000, Completed: 2000, QPS: 1895.468693,
			AvgLatency: 2376 * time.Microsecond, MaxLatency: 56066 * time.Microsecond,
			Rcodes: map[string]int{"NOERROR": 2000}}, false},
		{"nothing answered", perfNone, perfResult{Sent: 10, Lost: 10, Rcodes: map[string]int{}}, false},
		{"no statistics", "dnsperf: error: could not open file\n", perfResult{}, true},
		{"truncated", "Statistics:\n\n  Queries sent:  5\n", perfResult{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseDnsperf(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			if got.Sent != tt.want.Sent || got.Completed != tt.want.Completed || got.Lost != tt.want.Lost ||
				got.QPS != tt.want.QPS || !near(got.AvgLatency, tt.want.AvgLatency) || !near(got.MaxLatency, tt.want.MaxLatency) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
			if len(got.Rcodes) != len(tt.want.Rcodes) {
				t.Errorf("rcodes %v, want %v", got.Rcodes, tt.want.Rcodes)
			}
			for k, v := range tt.want.Rcodes {
				if got.Rcodes[k] != v {
					t.Errorf("rcode %s = %d, want %d", k, got.Rcodes[k], v)
				}
			}
		})
	}
}

// near allows for float rounding of seconds into nanoseconds.
func near(a, b time.Duration) bool { d := a - b; return d < time.Microsecond && d > -time.Microsecond }

func TestParseStatCPU(t *testing.T) {
	// A command name with spaces and a ')' must not shift the fields.
	stat := "4242 (dns dist) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 130 0 0 20 0 9 0 100 200000000 5000 18446744073709551615"
	got, err := parseStatCPU(stat)
	if err != nil {
		t.Fatal(err)
	}
	if want := 3800 * time.Millisecond; got != want {
		t.Errorf("cpu = %v, want %v (utime 250 + stime 130 ticks)", got, want)
	}
	if _, err := parseStatCPU("4242 (x) S 1"); err == nil {
		t.Error("short stat line accepted")
	}
}

func TestParseNftPackets(t *testing.T) {
	out := "table inet dot_sidecar_bench_1 {\n\tcounter upstream_syn {\n\t\tpackets 17 bytes 1020\n\t}\n}\n"
	if n, err := parseNftPackets(out); err != nil || n != 17 {
		t.Errorf("got %d, %v; want 17", n, err)
	}
	if _, err := parseNftPackets("Error: No such file or directory"); err == nil {
		t.Error("error output accepted")
	}
}

func TestCounterRuleset(t *testing.T) {
	got := counterRuleset("dot_sidecar_bench_7", []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.1:853"), netip.MustParseAddrPort("127.0.0.2:443"), netip.MustParseAddrPort("[::1]:8853")})
	for _, want := range []string{
		"table inet dot_sidecar_bench_7 {",
		"counter syn_127_0_0_1_853 { }",
		"counter syn_127_0_0_2_443 { }",
		"counter syn___1_8853 { }",
		"type filter hook input priority 0; policy accept;",
		`ip daddr 127.0.0.1 tcp dport 853 tcp flags & (syn | ack) == syn counter name "syn_127_0_0_1_853"`,
		`ip daddr 127.0.0.2 tcp dport 443 tcp flags & (syn | ack) == syn counter name "syn_127_0_0_2_443"`,
		`ip6 daddr ::1 tcp dport 8853 tcp flags & (syn | ack) == syn counter name "syn___1_8853"`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, got)
		}
	}
	if strings.Count(got, "{") != strings.Count(got, "}") {
		t.Errorf("unbalanced braces:\n%s", got)
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{5}, 5},
		{[]float64{9, 1, 5}, 5},
		{[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		in := append([]float64(nil), tt.in...)
		if got := median(tt.in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
		for i := range in {
			if in[i] != tt.in[i] {
				t.Fatalf("median reordered its input: %v", tt.in)
			}
		}
	}
}

func TestRatio(t *testing.T) {
	tests := []struct {
		v, base float64
		want    string
	}{
		{30, 20, "1.50×"},
		{10, 40, "0.25×"},
		{0, 0, "1.00×"},
		{5, 0, ""},
	}
	for _, tt := range tests {
		if got := ratio(tt.v, tt.base); got != tt.want {
			t.Errorf("ratio(%v, %v) = %q, want %q", tt.v, tt.base, got, tt.want)
		}
	}
}

func TestAggregate(t *testing.T) {
	mk := func(qps float64, completed int, cpu time.Duration, conns int64, up float64, maxLat time.Duration) sample {
		return sample{perf: perfResult{QPS: qps, Completed: completed, MaxLatency: maxLat, Rcodes: map[string]int{"NOERROR": completed}},
			cpu: cpu, hasCPU: true, conns: conns, upQueries: up}
	}
	maxRuns := []sample{
		mk(100, 1000, 50*time.Millisecond, 2, 1000, 0),
		// peakOpen is set below
		mk(300, 1000, 10*time.Millisecond, 0, 1000, 0),
		mk(200, 1000, 30*time.Millisecond, 1, 1010, 0),
	}
	rateRuns := []sample{mk(2000, 2000, 0, 4, 2000, 3*time.Millisecond), mk(2000, 2000, 0, 0, 2000, time.Millisecond)}
	rateRuns[1].perf.Rcodes["SERVFAIL"] = 3
	maxRuns[1].peakOpen, rateRuns[0].peakOpen = 5, 3
	r := aggregate("x", "udp", maxRuns, rateRuns, 1<<20)
	if r.qps != 200 {
		t.Errorf("qps = %v, want median 200", r.qps)
	}
	if r.cpuPerQ != 30*time.Microsecond {
		t.Errorf("cpu/q = %v, want 30µs", r.cpuPerQ)
	}
	if r.conns != 4 {
		t.Errorf("conns = %d, want the most of any run, 4", r.conns)
	}
	if r.peakOpen != 5 {
		t.Errorf("peak open = %d, want the most of any run, 5", r.peakOpen)
	}
	if r.maxLat != 2*time.Millisecond {
		t.Errorf("max latency = %v, want median 2ms", r.maxLat)
	}
	if !r.hasUpPerQ || r.upPerAns != 1 {
		t.Errorf("upstream/answer = %v (%v), want 1", r.upPerAns, r.hasUpPerQ)
	}
	if r.badRcodes["SERVFAIL"] != 3 {
		t.Errorf("bad rcodes %v, want SERVFAIL 3", r.badRcodes)
	}
}

func TestRenderTable(t *testing.T) {
	rows := []row{
		{target: "direct", proto: "udp", qps: 60000, avgLat: 60 * time.Microsecond, maxLat: time.Millisecond, conns: 0, peakOpen: -1},
		{target: "dot-sidecar", proto: "udp", qps: 20000, cpuPerQ: 20 * time.Microsecond, rateCPU: 40 * time.Microsecond, hasCPU: true,
			avgLat: 100 * time.Microsecond, maxLat: 2 * time.Millisecond, rss: 20 << 20, conns: 2, peakOpen: 2, upPerAns: 1, hasUpPerQ: true},
		{target: "dnsdist", proto: "udp", qps: 10000, cpuPerQ: 50 * time.Microsecond, rateCPU: 80 * time.Microsecond, hasCPU: true,
			avgLat: 200 * time.Microsecond, maxLat: 40 * time.Millisecond, rss: 30 << 20, conns: 400, peakOpen: 100, upPerAns: 1, hasUpPerQ: true},
		{target: "coredns", proto: "tcp", qps: 5000, conns: -1, peakOpen: -1},
	}
	out := renderTable(rows, baseTarget)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2+len(rows) {
		t.Fatalf("%d lines, want header, rule and %d rows:\n%s", len(lines), len(rows), out)
	}
	cols := len(strings.Split(lines[0], "|"))
	for i, l := range lines {
		if n := len(strings.Split(l, "|")); n != cols {
			t.Errorf("line %d has %d cells, header %d: %s", i, n-2, cols-2, l)
		}
	}
	for _, want := range []string{
		"| dot-sidecar | UDP | 20000 (1.00×) |",
		"| dnsdist | UDP | 10000 (0.50×) |",
		"50.0 µs (2.50×)",                        // CPU per query against dot-sidecar's 20 µs
		"40.000 ms (20.00×)",                     // max latency
		"400 (200.00×) | 100 (50.00×) | 1.000 |", // TLS connections opened, open at peak
		"30.0 MiB (1.50×)",
		"| direct | UDP | 60000 (3.00×) | 0 (1.00×) | — |", // no relay CPU for the baseline
		"| coredns | TCP | 5000 | 0 |",                     // no dot-sidecar TCP row: no ratios
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := config{duration: time.Second, rounds: 1, names: 1, clients: 1, inflight: 1, rate: 1,
		targets: []string{"direct", "dot-sidecar"}, protos: []string{"udp", "tcp"}, mode: modeRelay}
	if err := validate(good); err != nil {
		t.Fatalf("valid config rejected: %v", err)
	}
	tests := []struct {
		name string
		mod  func(*config)
	}{
		{"unknown target", func(c *config) { c.targets = []string{"bind9"} }},
		{"unknown proto", func(c *config) { c.protos = []string{"dot"} }},
		{"zero rounds", func(c *config) { c.rounds = 0 }},
		{"unknown mode", func(c *config) { c.mode = "fast" }},
	}
	for _, tt := range tests {
		c := good
		tt.mod(&c)
		if err := validate(c); err == nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
}

func TestRenderLookups(t *testing.T) {
	out := renderLookups([]lookupCount{
		{setting: "CLUSTER_DNS=off", public: []string{"api.example.com.c.example.internal. A", "api.example.com. A"}},
		{setting: "CLUSTER_DNS=auto (default)", public: []string{"api.example.com. A"}, cluster: []string{"a", "b", "c", "d"}},
	}, nil)
	for _, want := range []string{
		"| CLUSTER_DNS=off | 2: api.example.com.c.example.internal. A, api.example.com. A | 0 |",
		"| CLUSTER_DNS=auto (default) | 1: api.example.com. A | 4 |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("lookup count lacks %q:\n%s", want, out)
		}
	}
	if out := renderLookups(nil, errors.New("no ip")); !strings.Contains(out, "not measured: no ip") || strings.Contains(out, "|---") {
		t.Errorf("without counts:\n%s", out)
	}
}

func TestDoHVersusDoT(t *testing.T) {
	rows := []row{
		{target: "dot-sidecar", proto: "udp", qps: 50000, cpuPerQ: 10 * time.Microsecond, hasCPU: true},
		{target: "dot-sidecar-doh", proto: "udp", qps: 40000, cpuPerQ: 13 * time.Microsecond, hasCPU: true, doh: true},
		{target: "dot-sidecar", proto: "tcp", qps: 50000, hasCPU: false},
		{target: "dot-sidecar-doh", proto: "tcp", qps: 40000, cpuPerQ: 13 * time.Microsecond, hasCPU: true, doh: true},
	}
	want := "dot-sidecar over DoH against itself over DoT: UDP clients: CPU/query 1.30× (13.0 µs vs 10.0 µs), qps 0.80×."
	if got := dohVersusDoT(rows); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if got := dohVersusDoT(rows[:1]); got != "" {
		t.Errorf("without a DoH row: %q", got)
	}
}

func TestPoolNote(t *testing.T) {
	rows := []row{
		{target: "dot-sidecar", proto: "udp", peakOpen: 2},
		{target: "dot-sidecar", proto: "tcp", peakOpen: 1},
		{target: "dot-sidecar-doh", proto: "udp", peakOpen: 1, doh: true},
		{target: "dot-sidecar-doh", proto: "tcp", peakOpen: 2, doh: true},
		{target: "coredns-doh", proto: "udp", peakOpen: 9, doh: true},
	}
	opened := map[string]int64{"dot-sidecar": 3, "dot-sidecar-doh": 1, "coredns-doh": 40}
	want := "Upstream connections against dot-sidecar's pool (UPSTREAM_POOL_SIZE=2, per upstream): " +
		"dot-sidecar held at most 2 open at once and opened 3 over the whole measurement; " +
		"dot-sidecar-doh held at most 2 open at once and opened 1 over the whole measurement: within the pool."
	if got := poolNote(rows, opened, 2); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if got := poolNote(rows, nil, 1); !strings.HasSuffix(got, "once: **above the pool**.") {
		t.Errorf("above the pool, without counts: %q", got)
	}
	if got := poolNote(rows[4:], opened, 2); got != "" {
		t.Errorf("without dot-sidecar rows: %q", got)
	}
}

// TestRenderCacheRows: caching relays get a table of their own, compared
// with dot-sidecar's cache and headed by the direct row; the notes set each
// caching relay's throughput against direct.
func TestRenderCacheRows(t *testing.T) {
	rows := []row{
		{target: "direct", proto: "udp", qps: 100000, conns: -1, peakOpen: -1},
		{target: "dot-sidecar", proto: "udp", qps: 50000, cpuPerQ: 14 * time.Microsecond, hasCPU: true, conns: -1, peakOpen: -1},
		{target: "dot-sidecar-cache", proto: "udp", qps: 90000, cpuPerQ: 5 * time.Microsecond, hasCPU: true, conns: -1, peakOpen: -1, cache: true},
		{target: "dnsdist-cache", proto: "udp", qps: 45000, cpuPerQ: 10 * time.Microsecond, hasCPU: true, conns: -1, peakOpen: -1, cache: true},
		{target: "unbound", proto: "udp", qps: 25000, cpuPerQ: 28 * time.Microsecond, hasCPU: true, conns: -1, peakOpen: -1},
	}
	dot, doh, cached := splitRows(rows)
	if len(dot) != 3 || len(doh) != 0 || len(cached) != 3 {
		t.Fatalf("split into %d DoT, %d DoH, %d caching rows; want 3, 0, 3", len(dot), len(doh), len(cached))
	}
	out := renderTable(cached, cacheBaseTarget)
	for _, want := range []string{
		"| direct | UDP | 100000 (1.11×) |",
		"| dot-sidecar-cache | UDP | 90000 (1.00×) |",
		"| dnsdist-cache | UDP | 45000 (0.50×) |",
		"10.0 µs (2.00×)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if out := renderTable(dot, baseTarget); !strings.Contains(out, "| unbound | UDP | 25000 (0.50×) |") || !strings.Contains(out, "28.0 µs (2.00×)") {
		t.Errorf("DoT table:\n%s", out)
	}
	notes := strings.Join(cacheNotes(rows), "\n")
	for _, want := range []string{"dot-sidecar-cache/UDP 0.90×", "dnsdist-cache/UDP 0.45×"} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	if strings.Contains(notes, "unbound/UDP") {
		t.Errorf("a relay without cache in the cache notes:\n%s", notes)
	}
	// A cache-mode run (direct and caching relays only) has no DoT table.
	if dot, _, cached := splitRows([]row{rows[0], rows[2]}); len(dot) != 0 || len(cached) != 2 {
		t.Errorf("cache mode: %d DoT rows, %d caching rows; want 0, 2", len(dot), len(cached))
	}
}
