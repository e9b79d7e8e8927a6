package main

import (
	"fmt"
	"strings"
	"time"
)

// baseTarget is the relay every figure of the DoT table is compared with,
// baseDoH that of the DoH table (cacheBaseTarget, in cache.go, that of the
// caching relays' table).
const (
	baseTarget = "dot-sidecar"
	baseDoH    = "dot-sidecar-doh"
)

// ratio renders v relative to base as "1.23×". It returns "" when there is
// nothing meaningful to show: no base, or a zero base with a non-zero value.
func ratio(v, base float64) string {
	switch {
	case base == 0 && v == 0:
		return "1.00×"
	case base == 0:
		return ""
	}
	return fmt.Sprintf("%.2f×", v/base)
}

// cell joins a figure and its ratio to the base row.
func cell(text string, v, base float64, hasBase bool) string {
	if !hasBase {
		return text
	}
	if r := ratio(v, base); r != "" {
		return text + " (" + r + ")"
	}
	return text
}

func ms(d time.Duration) string { return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond)) }
func us(d time.Duration) string { return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond)) }

// renderTable writes one Markdown table: a row per target and client
// protocol, every figure with its ratio to baseName's for the same
// protocol. Rows whose target is the direct baseline have no relay figures.
func renderTable(rows []row, baseName string) string {
	base := map[string]row{}
	for _, r := range rows {
		if r.target == baseName {
			base[r.proto] = r
		}
	}
	var b strings.Builder
	b.WriteString("| relay | clients | qps | lost | CPU/query | avg latency @rate | max latency @rate | lost @rate | CPU/query @rate | peak RSS | TLS conns opened | TLS conns open (peak) | upstream queries/answer |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, r := range rows {
		br, ok := base[r.proto]
		cols := []string{
			r.target, strings.ToUpper(r.proto),
			cell(fmt.Sprintf("%.0f", r.qps), r.qps, br.qps, ok),
			cell(fmt.Sprintf("%.0f", r.lost), r.lost, br.lost, ok),
			dash,
			cell(ms(r.avgLat), float64(r.avgLat), float64(br.avgLat), ok),
			cell(ms(r.maxLat), float64(r.maxLat), float64(br.maxLat), ok),
			cell(fmt.Sprintf("%.0f", r.rateLost), r.rateLost, br.rateLost, ok),
			dash, dash, dash, dash, dash,
		}
		if r.hasCPU {
			cols[4] = cell(us(r.cpuPerQ), float64(r.cpuPerQ), float64(br.cpuPerQ), ok && br.hasCPU)
			cols[8] = cell(us(r.rateCPU), float64(r.rateCPU), float64(br.rateCPU), ok && br.hasCPU)
		}
		if r.rss > 0 {
			cols[9] = cell(fmt.Sprintf("%.1f MiB", float64(r.rss)/(1<<20)), float64(r.rss), float64(br.rss), ok && br.rss > 0)
		}
		if r.conns >= 0 && r.target != "direct" {
			cols[10] = cell(fmt.Sprintf("%d", r.conns), float64(r.conns), float64(br.conns), ok && br.conns >= 0)
		}
		if r.peakOpen >= 0 && r.target != "direct" {
			cols[11] = cell(fmt.Sprintf("%d", r.peakOpen), float64(r.peakOpen), float64(br.peakOpen), ok && br.peakOpen >= 0)
		}
		if r.hasUpPerQ {
			cols[12] = fmt.Sprintf("%.3f", r.upPerAns)
		}
		b.WriteString("| " + strings.Join(cols, " | ") + " |\n")
	}
	return b.String()
}

const dash = "—"

// dohVersusDoT says what DoH costs dot-sidecar against DoT, per client
// protocol: CPU per query and throughput of dot-sidecar-doh over
// dot-sidecar's.
func dohVersusDoT(rows []row) string {
	find := func(target, proto string) (row, bool) {
		for _, r := range rows {
			if r.target == target && r.proto == proto {
				return r, true
			}
		}
		return row{}, false
	}
	var parts []string
	for _, proto := range []string{"udp", "tcp"} {
		dot, ok1 := find(baseTarget, proto)
		doh, ok2 := find(baseDoH, proto)
		if !ok1 || !ok2 || !dot.hasCPU || !doh.hasCPU {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s clients: CPU/query %s (%s vs %s), qps %s",
			strings.ToUpper(proto), ratio(float64(doh.cpuPerQ), float64(dot.cpuPerQ)), us(doh.cpuPerQ), us(dot.cpuPerQ),
			ratio(doh.qps, dot.qps)))
	}
	if len(parts) == 0 {
		return ""
	}
	return "dot-sidecar over DoH against itself over DoT: " + strings.Join(parts, "; ") + "."
}

// poolNote checks dot-sidecar's upstream connections against its pool, over
// DoT and over DoH: the most it held open at once (sampled, every run of
// either client protocol) must not exceed pool; how many it opened over the
// whole measurement (counted, from opened) says whether it kept them.
func poolNote(rows []row, opened map[string]int64, pool int) string {
	var parts []string
	within := true
	for _, target := range []string{baseTarget, baseDoH} {
		peak := -1
		for _, r := range rows {
			if r.target == target {
				peak = max(peak, r.peakOpen)
			}
		}
		if peak < 0 {
			continue
		}
		within = within && peak <= pool
		part := fmt.Sprintf("%s held at most %d open at once", target, peak)
		if n, ok := opened[target]; ok {
			part += fmt.Sprintf(" and opened %d over the whole measurement", n)
		}
		parts = append(parts, part)
	}
	if len(parts) == 0 {
		return ""
	}
	verdict := "within the pool"
	if !within {
		verdict = "**above the pool**"
	}
	return fmt.Sprintf("Upstream connections against dot-sidecar's pool (UPSTREAM_POOL_SIZE=%d, per upstream): %s: %s.",
		pool, strings.Join(parts, "; "), verdict)
}
