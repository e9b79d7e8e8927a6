package main

import (
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// splitRows sorts rows into the report's tables: relays forwarding over
// DoT, over DoH, and relays answering from their caches. The direct rows,
// the box's plain-UDP limit, head the DoT table and the caching one, each
// when it has other rows.
func splitRows(rows []row) (dot, doh, cached []row) {
	hasDot, hasCache := false, false
	for _, r := range rows {
		hasDot = hasDot || (r.target != "direct" && !r.doh && !r.cache)
		hasCache = hasCache || r.cache
	}
	for _, r := range rows {
		switch {
		case r.target == "direct":
			if hasDot || !hasCache {
				dot = append(dot, r)
			}
			if hasCache {
				cached = append(cached, r)
			}
		case r.doh:
			doh = append(doh, r)
		case r.cache:
			cached = append(cached, r)
		default:
			dot = append(dot, r)
		}
	}
	return dot, doh, cached
}

// renderReport writes the header, the table and the notes a reader needs to
// judge the figures.
func renderReport(cfg config, rows []row, targets []*live, startup []time.Duration, notes []string, versions string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Measured %s on %s (%s).\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), machine(), versions)
	fmt.Fprintf(&b, "Load: dnsperf -c %d -q %d, %s per run, %d round(s) with targets interleaved, median of rounds; "+
		"\"@rate\" columns are the fixed-rate runs at %d queries/s, the others the unlimited-rate runs. "+
		"Upstream: Unbound, 1 thread, %d names × A/AAAA/TXT from local data, over verified DoT (its tls-port) "+
		"or verified DoH (its https-port, HTTP/2, default stream limit of 100).\n\n",
		cfg.clients, cfg.inflight, cfg.duration, cfg.rounds, cfg.rate, cfg.names)
	b.WriteString("**The load generator, the relays and the upstream share this machine's cores: absolute queries per second " +
		"and latencies move with whatever else runs. The ratios to dot-sidecar (in parentheses) and the CPU time per query " +
		"are the figures that mean something.**\n\n")
	dot, doh, cached := splitRows(rows)
	if len(dot) > 0 {
		fmt.Fprintf(&b, "Relays forwarding over DNS over TLS (ratios to %s):\n\n", baseTarget)
		b.WriteString(renderTable(dot, baseTarget))
		b.WriteString("\n")
	}
	if len(doh) > 0 {
		fmt.Fprintf(&b, "Relays forwarding over DNS over HTTPS to the same upstream (ratios to %s):\n\n", baseDoH)
		b.WriteString(renderTable(doh, baseDoH))
		b.WriteString("\n")
		if s := dohVersusDoT(rows); s != "" {
			b.WriteString(s + "\n\n")
		}
	}
	if len(cached) > 0 {
		fmt.Fprintf(&b, "Relays answering from their caches, warmed, over DNS over TLS (ratios to %s):\n\n", cacheBaseTarget)
		b.WriteString(renderTable(cached, cacheBaseTarget))
		b.WriteString("\n")
	}
	b.WriteString("- CPU/query: the relay's user+system time (/proc/PID/stat, all threads) during the run divided by the queries answered.\n")
	b.WriteString("- peak RSS: VmHWM of the relay process at the end of all runs (the same figure on its UDP and TCP rows).\n")
	b.WriteString("- TLS conns opened: new TCP connections to the upstream during a run, the most in any run of that row, counted " +
		"by an nftables counter of SYNs at the upstream side on an endpoint of the relay's own (a DoT port; for DoH, the https-port " +
		"on a loopback address of its own); 0 means the relay reused " +
		"connections it already had.\n")
	b.WriteString("- TLS conns open (peak): the most connections the relay held established to the upstream at once, " +
		"counted from /proc every " + connSampleInterval.String() + " during each run (a sample, unlike the column before), the most of any run.\n")
	b.WriteString("- upstream queries/answer: queries the upstream received over TLS (unbound-control num.query.tls; " +
		"num.query.https for DoH relays) per answer dnsperf got, unlimited-rate runs; below 1 would mean a cache answered, " +
		"above 1 retries or health checks.\n")
	if len(startup) > 0 {
		s := slices.Clone(startup)
		slices.Sort(s)
		fmt.Fprintf(&b, "- dot-sidecar /startupz: 200 after %s (median of %d fresh starts, from fork/exec; min %s, max %s; target < 100 ms).\n",
			ms(medianDur(s)), len(s), ms(s[0]), ms(s[len(s)-1]))
	}
	for _, l := range targets {
		fmt.Fprintf(&b, "- %s: %s\n", l.name, l.note)
	}
	var bad []string
	for _, r := range rows {
		if len(r.badRcodes) == 0 {
			continue
		}
		var parts []string
		for rc, n := range r.badRcodes {
			parts = append(parts, rc+" "+strconv.Itoa(n))
		}
		sort.Strings(parts)
		bad = append(bad, fmt.Sprintf("%s/%s: %s", r.target, r.proto, strings.Join(parts, ", ")))
	}
	if len(bad) > 0 {
		b.WriteString("- **Answers other than NOERROR** (every query asks for served data, so these are failures counted in qps): " +
			strings.Join(bad, "; ") + ".\n")
	}
	for _, n := range notes {
		b.WriteString("- " + n + "\n")
	}
	return b.String()
}

func hostOf(addr string) string {
	h, _, _ := net.SplitHostPort(addr)
	return h
}

func portOf(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}
