package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

// startUpstream starts the one upstream every relay forwards to: Unbound,
// one thread, answering from local data, with a plain port for the direct
// baseline, and a DoT port of its own for each DoT relay and a DoH address
// of its own (Unbound has one https-port) for each DoH relay (same server,
// same certificate), so that connections can be counted per relay. Its idle
// timeouts and HTTP/2 stream limit stay at Unbound's defaults, as a real
// upstream's would.
func startUpstream(ctx context.Context, names, dotRelays, dohRelays int) (*unboundtest.Server, error) {
	return unboundtest.New(ctx, unboundtest.Options{
		Names:         names,
		Threads:       1,
		Plain:         true,
		ExtraDoTPorts: dotRelays,
		HTTPS:         dohRelays > 0,
		ExtraHTTPS:    dohRelays,
		// Unbound keeps incoming-num-tcp buffers per listening port. Relays
		// that open a connection per in-flight query (dnsdist without
		// maxInFlight, CoreDNS) must not be capped by the default 10, and
		// Unbound shortens tcp-idle-timeout (down to 200 ms) once half of a
		// port's buffers are taken, which would measure the upstream
		// closing connections rather than the relay.
		IncomingNumTCP: incomingPerPort(dotRelays + dohRelays + 3),
		KillWithParent: true,
	})
}

// incomingPerPort is 1000 TCP buffers per listening port, or fewer if the
// file descriptor limit (which Unbound checks against all of them at start)
// does not allow that many.
func incomingPerPort(ports int) int {
	const want, spare = 1000, 2048
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Max > 1<<30 {
		return want
	}
	n := (int64(lim.Max) - spare) / int64(ports)
	return int(max(min(n, want), 100))
}

// writeQueryFile writes dnsperf input: every name with A, AAAA and TXT, in a
// fixed shuffled order, so that a run exercises all names and three answer
// shapes and every run sends the same sequence.
func writeQueryFile(dir string, recs []unboundtest.Record) (string, error) {
	lines := make([]string, 0, 3*len(recs))
	for _, r := range recs {
		for _, t := range []string{"A", "AAAA", "TXT"} {
			lines = append(lines, r.Name+" "+t)
		}
	}
	rng := rand.New(rand.NewPCG(7858, 853))
	rng.Shuffle(len(lines), func(i, j int) { lines[i], lines[j] = lines[j], lines[i] })
	path := filepath.Join(dir, "queries.txt")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("writing query file: %w", err)
	}
	return path, nil
}

// synCounter counts TCP connection attempts (SYN without ACK) arriving at
// each relay's own endpoint on the upstream (a DoT port, or a DoH address),
// with nftables counters in a table of the harness's own. The count is
// exact, taken by the kernel at the upstream side, and costs the relays
// nothing: no extra hop, no sampling. The endpoints carry nothing but TLS,
// and each relay has its own (an idle relay's health checks do not land in
// another's count), so each SYN is one TLS connection opened by that relay.
// (A SYN retransmitted because the accept queue was full would count twice;
// with hundreds of TCP buffers per port that does not happen here.)
type synCounter struct {
	nft   string
	table string
}

func newSynCounter(ctx context.Context, endpoints []netip.AddrPort) (*synCounter, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("counting upstream connections needs root (an nftables counter)")
	}
	nft, err := exec.LookPath("nft")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/nft"); serr != nil {
			return nil, fmt.Errorf("counting upstream connections needs nft (Debian package nftables)")
		}
		nft = "/usr/sbin/nft"
	}
	removeStaleTables(ctx, nft)
	c := &synCounter{nft: nft, table: tablePrefix + strconv.Itoa(os.Getpid())}
	cmd := exec.CommandContext(ctx, nft, "-f", "-")
	cmd.Stdin = strings.NewReader(counterRuleset(c.table, endpoints))
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("nft: adding table %s: %w: %s", c.table, err, out)
	}
	return c, nil
}

// counterRuleset is the nft script: one named counter per endpoint, bumped
// by SYNs to it.
func counterRuleset(table string, endpoints []netip.AddrPort) string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", table)
	for _, e := range endpoints {
		fmt.Fprintf(&b, "\tcounter %s { }\n", counterName(e))
	}
	b.WriteString("\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n")
	for _, e := range endpoints {
		family := "ip"
		if e.Addr().Is6() {
			family = "ip6"
		}
		fmt.Fprintf(&b, "\t\t%s daddr %s tcp dport %d tcp flags & (syn | ack) == syn counter name \"%s\"\n",
			family, e.Addr(), e.Port(), counterName(e))
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// counterName is an nft identifier for the endpoint, e.g. syn_127_0_0_2_443.
func counterName(e netip.AddrPort) string {
	return "syn_" + strings.NewReplacer(".", "_", ":", "_").Replace(e.Addr().String()) + "_" + strconv.Itoa(int(e.Port()))
}

const tablePrefix = "dot_sidecar_bench_"

// removeStaleTables deletes the tables of earlier harness runs that were
// killed before they could clean up (their PID no longer exists).
func removeStaleTables(ctx context.Context, nft string) {
	out, err := exec.CommandContext(ctx, nft, "list", "tables", "inet").Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		pid, ok := strings.CutPrefix(f, tablePrefix)
		if !ok {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue
		}
		_ = exec.CommandContext(ctx, nft, "delete", "table", "inet", f).Run()
	}
}

var rePackets = regexp.MustCompile(`packets (\d+)`)

// read returns the SYNs counted so far to the endpoint.
func (c *synCounter) read(ctx context.Context, e netip.AddrPort) (int64, error) {
	out, err := exec.CommandContext(ctx, c.nft, "list", "counter", "inet", c.table, counterName(e)).CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("nft list counter: %w: %s", err, out)
	}
	return parseNftPackets(string(out))
}

func parseNftPackets(out string) (int64, error) {
	m := rePackets.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("nft counter output without packets: %q", out)
	}
	return strconv.ParseInt(m[1], 10, 64)
}

func (c *synCounter) close() error {
	out, err := exec.Command(c.nft, "delete", "table", "inet", c.table).CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft delete table %s: %w: %s", c.table, err, out)
	}
	return nil
}
