package netnstest

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// End is one end of a veth pair.
type End struct {
	NS *Netns
	// Name is the interface's name inside NS, at most 15 bytes (IFNAMSIZ).
	Name string
	// Addrs are added with their prefix length: "192.0.2.1/24",
	// "2001:db8::1/64".
	Addrs []string
}

// UsableTimeout bounds Veth's wait for the link and its addresses.
const UsableTimeout = 10 * time.Second

// Veth joins a and b with a veth pair, as a pod and its node are joined:
// both ends up, their addresses added, and returns once both ends are up
// and no address is still tentative. The pair is created directly inside
// the two namespaces, so nothing appears, even for a moment, in the test's
// own, and it goes away with them.
//
// Duplicate address detection is off on both ends (the link is private,
// and DAD would hold every IPv6 address, the kernel's link-local one
// included, back for a second).
func Veth(t testing.TB, a, b End) {
	t.Helper()
	for _, e := range []End{a, b} {
		if len(e.Name) > 15 {
			t.Fatalf("interface name %q is longer than 15 bytes", e.Name)
		}
	}
	host(t, "ip", "link", "add", a.Name, "netns", a.NS.Name, "type", "veth", "peer", "name", b.Name, "netns", b.NS.Name)
	for _, e := range []End{a, b} {
		e.NS.Must(t, "sysctl", "-qw", "net.ipv6.conf."+e.Name+".accept_dad=0")
		for _, addr := range e.Addrs {
			p, err := netip.ParsePrefix(addr)
			if err != nil {
				t.Fatalf("address %q: %v", addr, err)
			}
			args := []string{"ip", "addr", "add", addr, "dev", e.Name}
			if p.Addr().Is6() {
				args = append(args, "nodad")
			}
			e.NS.Must(t, args...)
		}
		e.NS.Must(t, "ip", "link", "set", e.Name, "up")
	}
	for _, e := range []End{a, b} {
		testkit.WaitFor(t, fmt.Sprintf("%s %s up with its addresses usable", e.NS, e.Name), UsableTimeout,
			func() error { return usable(e) })
	}
}

// usable: the link is up at both ends (LOWER_UP) and no IPv6 address on it
// is still tentative.
func usable(e End) error {
	r := e.NS.Run(nil, "ip", "-o", "link", "show", "dev", e.Name)
	if r.Err != nil {
		return r.Err
	}
	if !strings.Contains(r.Stdout, "LOWER_UP") {
		return fmt.Errorf("not up yet: %s", r.Stdout)
	}
	r = e.NS.Run(nil, "ip", "-o", "-6", "addr", "show", "dev", e.Name, "tentative")
	if r.Err != nil {
		return r.Err
	}
	if s := strings.TrimSpace(r.Stdout); s != "" {
		return fmt.Errorf("tentative addresses: %s", s)
	}
	return nil
}
