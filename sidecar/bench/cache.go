package main

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// The cache mode (-mode cache) measures each relay that has a cache with
// it on, against the same upstream as the relay mode: dot-sidecar with its
// defaults, dnsdist with a packet cache, Unbound with its caches, CoreDNS
// with its cache plugin. Each is warmed with one pass over the query file
// before the runs, and every entry outlives the run (the upstream's TTLs are
// an hour), so that every measured query is a hit: the table's CPU/query is
// then the CPU per cache hit, and its "upstream queries/answer" shows that
// nothing reached the upstream. The direct row is the box's plain-UDP
// limit, the ceiling a hit path can reach.

const (
	modeRelay = "relay"
	modeCache = "cache"
)

// cacheBaseTarget is the row caching relays are compared with.
const cacheBaseTarget = "dot-sidecar-cache"

// dnsdistPacketCache gives dnsdist's default pool a packet cache as large
// as dot-sidecar's default, whose entries live as long as their TTLs say.
const dnsdistPacketCache = `pc = newPacketCache(10000, {maxTTL=86400, minTTL=0})
getPool(""):setCache(pc)
`

func cacheTargets() []target {
	return []target{
		{name: cacheBaseTarget, tool: "dot-sidecar", cache: true, start: startDotSidecar(true),
			note: "built from this tree, its cache with the defaults (CACHE_SIZE=10000, prefetch and serve-stale on)."},
		{name: "dnsdist-cache", tool: "dnsdist", cache: true, start: startDnsdist(0, true),
			note: "dnsdist with a packet cache of 10,000 entries on its default pool (newPacketCache(10000, {maxTTL=86400}))."},
		{name: "unbound-cache", tool: "unbound", cache: true, start: startUnboundForwarder(true),
			note: "the Unbound forwarder with its message and RRset caches at their defaults, one thread."},
		{name: "coredns-cache", tool: "coredns", cache: true, start: startCoreDNS(true),
			note: "CoreDNS's forward plugin as above behind its cache plugin with the defaults (9,984 entries per type)."},
	}
}

// warm sends every query of the query file (lines of them) once to each
// caching relay over each protocol measured (dnsdist keys its packet cache
// by transport too), so that the runs measure hits. A relay that loses a
// query or answers one with anything but NOERROR would be measured half
// cold: that is an error.
func warm(ctx context.Context, perfBin string, targets []*live, protos []string, qfile string, lines int) error {
	for _, l := range targets {
		if !l.cache {
			continue
		}
		for _, proto := range protos {
			start := time.Now()
			r, err := runDnsperf(ctx, perfBin, perfArgs{Server: "127.0.0.1", Port: l.port, Proto: proto, QueryFile: qfile,
				Duration: time.Minute, Clients: 1, Inflight: 20, Timeout: perfTimeout, Passes: 1})
			if err != nil {
				return fmt.Errorf("warming %s over %s: %w", l.name, proto, err)
			}
			if r.Completed != lines || r.Lost != 0 || r.Rcodes["NOERROR"] != lines {
				return fmt.Errorf("warming %s over %s: %d of %d queries answered NOERROR (%d lost, %v): refusing to measure a cold cache",
					l.name, proto, r.Rcodes["NOERROR"], lines, r.Lost, r.Rcodes)
			}
			logf("%s warmed over %s: %d queries in %s", l.name, proto, lines, time.Since(start).Round(time.Millisecond))
		}
	}
	return nil
}

// cacheNotes says how the caching rows were measured and sets each one's
// throughput against the direct row's, the target being 0.8×.
func cacheNotes(rows []row) []string {
	direct := map[string]float64{}
	for _, r := range rows {
		if r.target == "direct" {
			direct[r.proto] = r.qps
		}
	}
	var parts []string
	for _, r := range rows {
		if r.cache && direct[r.proto] > 0 {
			parts = append(parts, fmt.Sprintf("%s/%s %.2f×", r.target, strings.ToUpper(r.proto), r.qps/direct[r.proto]))
		}
	}
	if len(parts) == 0 {
		return nil
	}
	return []string{
		"Caching relays (the -cache rows) are compared with " + cacheBaseTarget + "; each was warmed with one pass over the query file, " +
			"so every measured query was a hit (upstream queries/answer near 0) and CPU/query is the CPU per hit.",
		"Throughput of the caching relays against direct (the box's plain-UDP limit): " + strings.Join(parts, ", ") + ".",
	}
}
