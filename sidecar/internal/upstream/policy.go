package upstream

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
)

// Policy chooses the healthy upstream a query goes to first. Retries then
// go to the next healthy upstream in configuration order.
type Policy int

const (
	// Sequential always prefers the first healthy upstream in configuration
	// order: a deterministic primary keeps latency and debugging predictable
	// (one server answers and caches everything, the TLS connections stay
	// warm on it), and the others take over only while it is down.
	Sequential Policy = iota
	// RoundRobin spreads queries evenly over the healthy upstreams in turn.
	RoundRobin
	// Random sends each query to a healthy upstream chosen at random.
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

// rank returns which of the healthy upstreams (0 ≤ rank < healthy, in
// configuration order) a query goes to first. Choosing among the healthy
// ones only, rather than starting at any upstream and skipping down ones,
// keeps round_robin and random even: the upstream after a down one would
// otherwise take its share too.
func (p Policy) rank(healthy int, rr *atomic.Uint64) int {
	if healthy <= 1 {
		return 0
	}
	switch p {
	case RoundRobin:
		return int((rr.Add(1) - 1) % uint64(healthy))
	case Random:
		return rand.IntN(healthy)
	}
	return 0
}
