package upstream

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
)

// Policy orders the upstreams a query tries. The first is where the query
// goes; the rest, in order, are where its retries go.
type Policy int

const (
	// Sequential always prefers the first healthy upstream in configuration
	// order: a deterministic primary keeps latency and debugging predictable,
	// and the others take over only while it is down.
	Sequential Policy = iota
	// RoundRobin spreads queries over all healthy upstreams in turn.
	RoundRobin
	// Random starts each query at a random healthy upstream.
	Random
)

// ParsePolicy accepts the names UPSTREAM_POLICY takes.
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "sequential":
		return Sequential, nil
	case "round_robin":
		return RoundRobin, nil
	case "random":
		return Random, nil
	}
	return 0, fmt.Errorf("unknown upstream policy %q (want sequential, round_robin or random)", s)
}

func (p Policy) String() string {
	switch p {
	case Sequential:
		return "sequential"
	case RoundRobin:
		return "round_robin"
	case Random:
		return "random"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// start returns the index a query's first attempt begins at.
func (p Policy) start(n int, rr *atomic.Uint64) int {
	if n <= 1 {
		return 0
	}
	switch p {
	case RoundRobin:
		return int(rr.Add(1) % uint64(n))
	case Random:
		return rand.IntN(n)
	}
	return 0
}
