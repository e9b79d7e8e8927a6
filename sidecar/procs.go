package main

import (
	"runtime"
	"strings"
)

// defaultProcs is GOMAXPROCS unless the environment sets GOMAXPROCS.
//
// A relay spends its time in system calls and in handing queries between
// goroutines, not in computing. With one P those hand-offs stay on one
// thread: no futex wake-ups of idle threads, no spinning threads looking for
// work, and goroutines made runnable together run back to back, so that the
// batched reads and writes (UDP and TLS) fill up: the yield that batches
// them, rawconn.YieldToBatch, is tuned for this. Measured against Unbound on
// two cores shared with the load generator (dnsperf, unlimited rate, lab
// A/B, 3 rounds): 2 Ps cost 20-22 us of CPU per query when the machine was
// otherwise idle and 46-62 us when other work took a core; 1 P cost 17-20 us
// either way, at the same or higher throughput (34-40k queries/s). One core
// serves a pod's DNS many times over; a node-level deployment expecting more
// sets GOMAXPROCS.
const defaultProcs = 1

// setProcs applies defaultProcs unless environ sets GOMAXPROCS (the runtime
// has applied that one already).
func setProcs(environ []string) {
	for _, kv := range environ {
		if strings.HasPrefix(kv, "GOMAXPROCS=") {
			return
		}
	}
	runtime.GOMAXPROCS(defaultProcs)
}
