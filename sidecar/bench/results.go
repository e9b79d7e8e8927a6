package main

import (
	"slices"
	"time"
)

// kind is the shape of a dnsperf run.
type kind string

const (
	kindMax  kind = "max"  // as fast as the relay answers: throughput
	kindRate kind = "rate" // fixed rate: latency
)

// sample is one dnsperf run against one target with what the harness saw
// around it.
type sample struct {
	perf perfResult
	// cpu is the relay's user+system time during the run; valid when hasCPU.
	cpu    time.Duration
	hasCPU bool
	// conns is the number of TCP connections opened to the upstream's DoT
	// port during the run; -1 when not counted.
	conns int64
	// upQueries is the number of queries the upstream received over TLS
	// during the run; -1 when not known.
	upQueries float64
	// peakOpen is the most connections the relay held open to the upstream
	// at any sample during the run; -1 when not sampled.
	peakOpen int
}

type key struct {
	target string
	proto  string
	kind   kind
}

// row is the figures of one target and client protocol, medians of rounds.
// A NaN-free zero value means "not measured" where the has* flag is false.
type row struct {
	target, proto string
	doh           bool // the relay forwards over DoH
	cache         bool // the relay runs with its cache on, warmed (cache.go)

	qps       float64
	lost      float64
	cpuPerQ   time.Duration
	hasCPU    bool
	avgLat    time.Duration
	maxLat    time.Duration
	rateLost  float64
	rateCPU   time.Duration
	rss       int64 // bytes, 0 when not measured
	conns     int64 // max over all runs; -1 when not counted
	peakOpen  int   // max over all runs; -1 when not sampled
	upPerAns  float64
	hasUpPerQ bool
	badRcodes map[string]int // answers other than NOERROR, all runs summed
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func medianDur(xs []time.Duration) time.Duration {
	f := make([]float64, len(xs))
	for i, x := range xs {
		f[i] = float64(x)
	}
	return time.Duration(median(f))
}

// aggregate turns the rounds of one target and protocol into a row.
func aggregate(target, proto string, maxRuns, rateRuns []sample, rss int64) row {
	r := row{target: target, proto: proto, rss: rss, conns: -1, peakOpen: -1, badRcodes: map[string]int{}}
	var qps, lost, rateLost, upPer []float64
	var cpu, rateCPU, avg, mx []time.Duration
	r.hasCPU = len(maxRuns) > 0
	for _, s := range maxRuns {
		qps = append(qps, s.perf.QPS)
		lost = append(lost, float64(s.perf.Lost))
		if s.hasCPU && s.perf.Completed > 0 {
			cpu = append(cpu, s.cpu/time.Duration(s.perf.Completed))
		} else {
			r.hasCPU = false
		}
		if s.upQueries >= 0 && s.perf.Completed > 0 {
			upPer = append(upPer, s.upQueries/float64(s.perf.Completed))
		}
	}
	for _, s := range rateRuns {
		rateLost = append(rateLost, float64(s.perf.Lost))
		avg = append(avg, s.perf.AvgLatency)
		mx = append(mx, s.perf.MaxLatency)
		if s.hasCPU && s.perf.Completed > 0 {
			rateCPU = append(rateCPU, s.cpu/time.Duration(s.perf.Completed))
		} else {
			r.hasCPU = false
		}
	}
	for _, s := range append(slices.Clone(maxRuns), rateRuns...) {
		r.conns = max(r.conns, s.conns)
		r.peakOpen = max(r.peakOpen, s.peakOpen)
		for rc, n := range s.perf.Rcodes {
			if rc != "NOERROR" {
				r.badRcodes[rc] += n
			}
		}
	}
	r.qps, r.lost, r.rateLost = median(qps), median(lost), median(rateLost)
	r.cpuPerQ, r.rateCPU = medianDur(cpu), medianDur(rateCPU)
	r.avgLat, r.maxLat = medianDur(avg), medianDur(mx)
	if len(upPer) == len(maxRuns) && len(upPer) > 0 {
		r.upPerAns, r.hasUpPerQ = median(upPer), true
	}
	return r
}
