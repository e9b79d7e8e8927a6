package netns

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
)

// capture is tcpdump running on the pod's outer interface. Loopback (where
// redirected queries travel to the sidecar) is deliberately not captured:
// eth0 is what leaves the pod.
type capture struct {
	n    *netnstest.Netns
	proc *testkit.Process
	file string
}

func startCapture(t *testing.T, n *netnstest.Netns, dir, name string) *capture {
	t.Helper()
	file := filepath.Join(dir, name+".pcap")
	// -U writes each packet at once, so nothing is lost when we stop it;
	// -Z root keeps tcpdump from dropping to a user that cannot write dir.
	p := start(t, n, "tcpdump "+name, rootUID, nil,
		"tcpdump", "-i", podIface, "-n", "-U", "--immediate-mode", "-Z", "root", "-s", "256", "-w", file)
	testkit.WaitFor(t, "tcpdump to listen on "+n.Name+" "+podIface, 10*time.Second, func() error {
		if p.Exited() {
			return testkit.Permanent(fmt.Errorf("tcpdump exited: %s", p.Output()))
		}
		if !strings.Contains(p.Output(), "listening on "+podIface) {
			return fmt.Errorf("not listening yet: %q", p.Output())
		}
		return nil
	})
	return &capture{n: n, proc: p, file: file}
}

// stop ends the capture once tcpdump has written every packet the kernel
// handed it: a packet still queued when tcpdump stops would be missing from
// the file, and a leak could hide there.
func (c *capture) stop(t *testing.T) {
	t.Helper()
	testkit.WaitFor(t, "tcpdump to write every packet it received", 10*time.Second, func() error {
		// SIGUSR1 makes tcpdump print its counters.
		before := strings.Count(c.proc.Output(), "packets captured")
		if err := c.proc.Cmd.Process.Signal(syscall.SIGUSR1); err != nil {
			return err
		}
		var st captureStats
		testkit.WaitFor(t, "tcpdump's counters", 5*time.Second, func() error {
			var err error
			st, err = parseCaptureStats(c.proc.Output(), before+1)
			return err
		})
		if st.captured != st.received {
			return fmt.Errorf("captured %d of %d packets so far", st.captured, st.received)
		}
		return nil
	})
	if err := c.proc.Stop(5 * time.Second); err != nil {
		t.Fatalf("stopping tcpdump: %v", err)
	}
	st, err := parseCaptureStats(c.proc.Output(), 1)
	if err != nil {
		t.Fatalf("tcpdump's final counters: %v", err)
	}
	if st.captured != st.received || st.dropped != 0 {
		t.Fatalf("incomplete capture (%+v): a leak could be missing from it\n%s", st, c.proc.Output())
	}
}

type captureStats struct{ captured, received, dropped int }

// tcpdump prints its counters on one line for SIGUSR1, on three at exit.
var statsRE = regexp.MustCompile(`(\d+) packets captured,?\s+(\d+) packets received by filter,?\s+(\d+) packets dropped by kernel`)

// parseCaptureStats reads the last of tcpdump's counter reports, provided
// at least n were printed.
func parseCaptureStats(out string, n int) (captureStats, error) {
	all := statsRE.FindAllStringSubmatch(out, -1)
	if len(all) < n {
		return captureStats{}, fmt.Errorf("%d counter reports, want %d: %q", len(all), n, out)
	}
	m := all[len(all)-1]
	a, _ := strconv.Atoi(m[1])
	b, _ := strconv.Atoi(m[2])
	d, _ := strconv.Atoi(m[3])
	return captureStats{captured: a, received: b, dropped: d}, nil
}

// packets returns the capture's packets that match a pcap filter, one line
// each, as tcpdump prints them.
func (c *capture) packets(t *testing.T, filter string) []string {
	t.Helper()
	out := c.n.Must(t, "tcpdump", "-r", c.file, "-n", "-tt", filter)
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// Filters describing what may leave the pod.
const (
	// Port 53 in any direction, IPv4 or IPv6, UDP or TCP.
	filterDNS = "port 53"
	// DoT to the upstream and its replies.
	filterDoT = "tcp port 853"
	// TLS handshake records (content type 22) over IPv4; BPF cannot index the
	// TCP header behind an IPv6 header, so IPv4 stands for both.
	filterTLSHandshake = "ip and tcp port 853 and tcp[((tcp[12:1] & 0xf0) >> 2):1] = 0x16"
	// Everything that is neither DoT nor link housekeeping: ARP, IPv6
	// neighbour and router discovery (ICMPv6 133-137) and MLD reports (which
	// carry a hop-by-hop header, next header 0).
	filterUnexpected = "not (tcp port 853) and not arp and " +
		"not (icmp6 and ip6[40] >= 133 and ip6[40] <= 137) and not (ip6 and ip6[6] = 0)"
)
