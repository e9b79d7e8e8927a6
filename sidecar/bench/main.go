// Command bench runs dot-sidecar beside the DNS relays users would pick
// instead (dnsdist, Unbound, stubby, CoreDNS), all forwarding over verified
// DNS-over-TLS to the same Unbound upstream, and, for those that can,
// dot-sidecar, dnsdist and CoreDNS over verified DNS-over-HTTPS to the same
// Unbound's https-port; drives each with dnsperf and prints Markdown tables
// comparing them.
//
// Run sidecar/bench/setup.sh once (it installs the peers), then, from the
// repository root and as root (for the nftables connection counter):
//
//	go run ./sidecar/bench                          # full run, a few minutes
//	go run ./sidecar/bench -duration 1s -rounds 1   # smoke run, under a minute
//
// Everything runs on loopback: 127.0.0.1, and 127.0.0.2 and up for the
// upstream's DoH listeners. The upstream is Unbound (one thread, local data,
// plain port for the direct baseline, see package unboundtest). Each relay
// gets its own port, and its own DoT port or DoH address on the upstream;
// before it is measured it must answer control
// queries correctly over UDP and TCP. For each round, each client protocol
// (UDP, TCP) and each run shape (as fast as possible; fixed rate) the targets
// run one after another (A B C A B C ...), and the table shows the median of
// the rounds. Around every run the harness reads the relay's CPU time from
// /proc/PID/stat, the upstream's TLS query counter (unbound-control) and an
// nftables counter of SYNs to the relay's endpoint on the upstream, so CPU
// per query and connections opened are exact, not sampled. Last (-lookups),
// in a network namespace standing in for a pod whose resolv.conf the kubelet
// wrote, it counts the queries one glibc lookup of a public name sends to the
// public upstream and to the cluster's resolver, with CLUSTER_DNS=off and
// with the default. Every process started is
// stopped on exit, on error and on Ctrl-C; the whole run has a deadline.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type config struct {
	duration    time.Duration
	rounds      int
	names       int
	clients     int
	inflight    int
	rate        int
	timeout     time.Duration
	targets     []string
	protos      []string
	sidecarBin  string
	corednsBin  string
	startupRuns int
	out         string
	keep        bool
	verifyCheck bool
	lookups     bool
	mode        string
}

// defaultTargets are each mode's targets.
var defaultTargets = map[string]string{
	modeRelay: "direct,dot-sidecar,dnsdist,dnsdist-pipelined,unbound,stubby,coredns,dot-sidecar-doh,dnsdist-doh,coredns-doh",
	modeCache: "direct,dot-sidecar-cache,dnsdist-cache,unbound-cache,coredns-cache",
}

func parseFlags() config {
	var c config
	var targets, protos string
	flag.DurationVar(&c.duration, "duration", 3*time.Second, "length of each dnsperf run")
	flag.IntVar(&c.rounds, "rounds", 3, "rounds; the table shows the median")
	flag.IntVar(&c.names, "names", 1000, "names the upstream serves (each queried for A, AAAA and TXT)")
	flag.IntVar(&c.clients, "clients", 10, "dnsperf clients (-c): UDP sockets or TCP connections")
	flag.IntVar(&c.inflight, "inflight", 100, "dnsperf queries outstanding (-q)")
	flag.IntVar(&c.rate, "rate", 2000, "queries per second of the fixed-rate (latency) runs")
	flag.DurationVar(&c.timeout, "timeout", 0, "deadline of the whole run (default: estimated from the other flags)")
	flag.StringVar(&targets, "targets", "", "targets to run, in order (default: the -mode's)")
	flag.StringVar(&c.mode, "mode", modeRelay, "relay: every relay with its cache off; cache: every relay that has one with its cache on, warmed, so that every query is a hit")
	flag.StringVar(&protos, "protos", "udp,tcp", "client protocols")
	flag.StringVar(&c.sidecarBin, "sidecar", "", "dot-sidecar binary (default: built from this tree)")
	flag.StringVar(&c.corednsBin, "coredns", "", "coredns binary (default: PATH, then $(go env GOPATH)/bin)")
	flag.IntVar(&c.startupRuns, "startup-runs", 5, "fresh dot-sidecar starts timed to /startupz (0 skips)")
	flag.StringVar(&c.out, "out", "", "also write the Markdown report to this file")
	flag.BoolVar(&c.keep, "keep", false, "keep the temporary directory (configs and logs)")
	flag.BoolVar(&c.verifyCheck, "verify-check", true, "first check that every relay refuses an upstream certificate without its server name")
	flag.BoolVar(&c.lookups, "lookups", true, "also count what one glibc lookup of a public name from a pod sends to the public upstream (a network namespace, the iptables step, dot-sidecar's routing)")
	flag.Parse()
	if targets == "" {
		targets = defaultTargets[c.mode]
	}
	c.targets = splitList(targets)
	c.protos = splitList(protos)
	return c
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func main() {
	cfg := parseFlags()
	// With the report piped into head or a closed terminal, a write to
	// stdout must fail rather than kill the harness before it has stopped
	// the processes it started.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		if ctx.Err() != nil {
			// The error is whatever the signal cut short; say what happened.
			err = fmt.Errorf("interrupted (everything it started has been stopped): %w", context.Cause(ctx))
		}
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

// estimate bounds the whole run: every dnsperf run plus its timeout and
// bookkeeping, plus starting and stopping everything.
func (c config) estimate() time.Duration {
	runs := c.rounds * len(c.targets) * len(c.protos) * 2
	return time.Duration(runs)*(c.duration+perfTimeout+3*time.Second) + 3*time.Minute
}

// perfTimeout is dnsperf's -t: how long a query may stay unanswered before it
// counts as lost.
const perfTimeout = 2 * time.Second

func validate(c config) error {
	var errs []error
	if c.duration <= 0 || c.rounds < 1 || c.names < 1 || c.clients < 1 || c.inflight < 1 || c.rate < 1 {
		errs = append(errs, errors.New("duration, rounds, names, clients, inflight and rate must be positive"))
	}
	known := map[string]bool{}
	for _, t := range allTargets() {
		known[t.name] = true
	}
	for _, t := range c.targets {
		if !known[t] {
			errs = append(errs, fmt.Errorf("unknown target %q", t))
		}
	}
	if _, ok := defaultTargets[c.mode]; !ok {
		errs = append(errs, fmt.Errorf("unknown mode %q (relay, cache)", c.mode))
	}
	for _, p := range c.protos {
		if p != "udp" && p != "tcp" {
			errs = append(errs, fmt.Errorf("unknown protocol %q (udp, tcp)", p))
		}
	}
	return errors.Join(errs...)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

func itoa(n int) string { return strconv.Itoa(n) }
