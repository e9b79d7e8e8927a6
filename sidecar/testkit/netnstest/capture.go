package netnstest

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// Capture is tcpdump running on one interface of a namespace, writing every
// packet to a file: the proof of what left a pod (port 53 in plaintext must
// not). Capture the pod's outer interface, not lo, where redirected queries
// travel to the sidecar.
type Capture struct {
	ns    *Netns
	iface string
	file  string
	proc  *testkit.Process
}

// CaptureTimeout bounds the waits of StartCapture and Stop.
const CaptureTimeout = 10 * time.Second

// StartCapture starts tcpdump on iface in ns, writing into dir, and returns
// once it listens. It needs tcpdump (skips, or fails under CI, without).
func StartCapture(t testing.TB, ns *Netns, iface, dir string) *Capture {
	t.Helper()
	testkit.RequireTools(t, "tcpdump")
	// A name of its own, so that a second capture of the same interface
	// into dir keeps the first one's file.
	f, err := os.CreateTemp(dir, ns.Name+"-"+iface+"-*.pcap")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	c := &Capture{ns: ns, iface: iface, file: f.Name()}
	// -U and --immediate-mode write each packet at once, so that none is
	// lost when it stops; -Z root keeps it from dropping to a user that
	// cannot write dir.
	cmd := ns.Command(context.Background(), "tcpdump", "-i", iface, "-n", "-U", "--immediate-mode",
		"-Z", "root", "-s", "256", "-w", c.file)
	c.proc = testkit.StartProcess(t, "tcpdump on "+ns.Name+" "+iface, cmd)
	testkit.WaitFor(t, "tcpdump to listen on "+ns.Name+" "+iface, CaptureTimeout, func() error {
		if c.proc.Exited() {
			return testkit.Permanent(fmt.Errorf("tcpdump exited: %s", c.proc.Output()))
		}
		if !strings.Contains(c.proc.Output(), "listening on "+iface) {
			return fmt.Errorf("not listening yet: %q", c.proc.Output())
		}
		return nil
	})
	return c
}

// Stop stops tcpdump once it has written every packet the kernel handed it
// (one still queued would be missing from the file, and a leak could hide
// there), and fails t if the kernel dropped any.
//
// Completeness is judged when Stop confirms it, not from tcpdump's exit
// report: everything the caller sent before calling Stop is in the counts
// by then, and a packet that arrives afterwards (a fresh veth's IPv6
// neighbour discovery, say) may be counted as received at exit but never
// read, which says nothing about what the caller sent.
func (c *Capture) Stop(t testing.TB) {
	t.Helper()
	// SIGUSR1 makes tcpdump print its counters on one line; asked is how
	// many reports there were when they were last asked for, -1 before.
	asked := -1
	var confirmed captureStats
	testkit.WaitFor(t, "tcpdump to write every packet it received", CaptureTimeout, func() error {
		out := c.proc.Output()
		reports := len(statsRE.FindAllString(out, -1))
		if asked >= 0 && reports == asked {
			return errors.New("no counters yet")
		}
		var behind error
		if asked >= 0 {
			st, err := parseCaptureStats(out, reports)
			if err != nil {
				return err
			}
			if st.dropped != 0 {
				return testkit.Permanent(fmt.Errorf("the kernel dropped %d packets (%+v): a leak could be missing from the capture\n%s", st.dropped, st, out))
			}
			if st.captured == st.received {
				confirmed = st
				return nil
			}
			behind = fmt.Errorf("captured %d of %d packets so far", st.captured, st.received)
		}
		if err := c.proc.Cmd.Process.Signal(syscall.SIGUSR1); err != nil {
			return testkit.Permanent(err)
		}
		asked = reports
		if behind != nil {
			return behind
		}
		return errors.New("counters asked for")
	})
	if err := c.proc.Stop(CaptureTimeout); err != nil {
		t.Fatalf("stopping tcpdump: %v", err)
	}
	final, err := parseCaptureStats(c.proc.Output(), 1)
	if err != nil {
		t.Fatalf("tcpdump's final counters: %v", err)
	}
	// Counters only grow; fewer packets at exit than confirmed would mean
	// the reports were misread.
	if final.captured < confirmed.captured {
		t.Fatalf("tcpdump captured %d packets at exit, fewer than the %d confirmed before\n%s", final.captured, confirmed.captured, c.proc.Output())
	}
}

// Packets returns the captured packets that match a pcap filter
// ("port 53"), one line each as tcpdump prints them.
func (c *Capture) Packets(t testing.TB, filter string) []string {
	t.Helper()
	out := c.ns.Must(t, "tcpdump", "-r", c.file, "-n", "-tt", filter)
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

// Raw returns the captured packets that match a pcap filter, each from its
// network-layer header on (IPv4 or IPv6), cut at the capture's snap length
// of 256 bytes: for tests that decode what a packet carries.
func (c *Capture) Raw(t testing.TB, filter string) [][]byte {
	t.Helper()
	out := c.ns.Must(t, "tcpdump", "-r", c.file, "-n", "-x", filter)
	pkts, err := parseHex(out)
	if err != nil {
		t.Fatalf("reading tcpdump -x output: %v", err)
	}
	return pkts
}

// parseHex reads tcpdump -x output: a summary line per packet, then lines
// "\t0x0010:  4500 0054 ..." of its bytes.
func parseHex(out string) ([][]byte, error) {
	var pkts [][]byte
	for _, l := range strings.Split(out, "\n") {
		trimmed := strings.TrimSpace(l)
		if !strings.HasPrefix(trimmed, "0x") || !strings.HasPrefix(l, "\t") {
			if trimmed != "" {
				pkts = append(pkts, nil) // a packet's summary line
			}
			continue
		}
		if len(pkts) == 0 {
			return nil, fmt.Errorf("bytes before any packet: %q", l)
		}
		_, data, ok := strings.Cut(trimmed, ":")
		if !ok {
			return nil, fmt.Errorf("line %q", l)
		}
		b, err := hex.DecodeString(strings.Join(strings.Fields(data), ""))
		if err != nil {
			return nil, fmt.Errorf("line %q: %w", l, err)
		}
		pkts[len(pkts)-1] = append(pkts[len(pkts)-1], b...)
	}
	return pkts, nil
}

type captureStats struct{ captured, received, dropped int }

// tcpdump prints its counters on one line for SIGUSR1, on three at exit,
// with "packet" for a count of one.
var statsRE = regexp.MustCompile(`(\d+) packets? captured,?\s+(\d+) packets? received by filter,?\s+(\d+) packets? dropped by kernel`)

// parseCaptureStats reads the last of tcpdump's counter reports, provided
// at least n were printed.
func parseCaptureStats(out string, n int) (captureStats, error) {
	all := statsRE.FindAllStringSubmatch(out, -1)
	if len(all) < n {
		return captureStats{}, fmt.Errorf("%d counter reports, want %d: %q", len(all), n, out)
	}
	m := all[len(all)-1]
	var st captureStats
	for i, dst := range []*int{&st.captured, &st.received, &st.dropped} {
		*dst, _ = strconv.Atoi(m[i+1])
	}
	return st, nil
}
