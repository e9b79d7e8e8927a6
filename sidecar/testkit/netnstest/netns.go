// Package netnstest makes network namespaces for tests, the one way the
// project's tests get a network of their own: iptables rules, wildcard binds,
// addresses and links that must not touch the machine's.
//
//	ns := netnstest.New(t)                  // unique name, lo up, removed at cleanup
//	ns.Must(t, "ip", "addr", "add", "192.0.2.1/24", "dev", "lo")
//	res := ns.Run(env, "iptables-save")     // any command, as root, in ns
//	as := netnstest.AsUser(10053)           // argv prefix: that uid, no capabilities
//	p := testkit.StartProcess(t, "server", ns.Command(ctx, append(as, bin)...))
//	ns.Do(t, func() error { ... })          // Go code on a thread inside ns
//	conn, err := ns.DialContext(ctx, "tcp", addr) // a socket made inside ns
//	netnstest.Veth(t, netnstest.End{NS: a, Name: "eth0", Addrs: []string{"192.0.2.1/24"}},
//		netnstest.End{NS: b, Name: "eth0", Addrs: []string{"192.0.2.2/24"}})
//	c := netnstest.StartCapture(t, a, "eth0", dir) // tcpdump; c.Stop(t), c.Packets(t, "port 53"), c.Raw(t, "udp")
//
// A namespace is made and entered with iproute2 (`ip netns add`, `ip netns
// exec`), so it has a name under /run/netns that other tools (iptables-save,
// tcpdump, unbound through unboundtest's Prefix) can be run in, and
// /etc/netns/NAME files (WriteEtc) replace the namespace's view of /etc.
// Everything needs root and ip: New skips the test without them (fails it
// under CI=true).
//
// Names are unique across test packages running at the same time and across
// runs, so leftovers of a killed run never collide; veth names need only be
// unique inside their namespace, since links are created there directly.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// Netns is a network namespace made for one test.
type Netns struct {
	// Name is the namespace's name under /run/netns.
	Name string

	etc atomic.Bool // WriteEtc was used: commands must see /etc/netns/Name
}

// New makes a namespace with a unique name and its loopback up (so that
// 127.0.0.1 and ::1 exist, as in a pod), and removes it when the test ends,
// after the processes started in it later (cleanups run last first).
func New(t testing.TB) *Netns {
	t.Helper()
	testkit.RequireRoot(t)
	testkit.RequireTools(t, "ip")
	n := &Netns{Name: UniqueName(t)}
	host(t, "ip", "netns", "add", n.Name)
	t.Cleanup(func() {
		if err := os.RemoveAll(n.etcDir()); err != nil {
			t.Errorf("removing %s: %v", n.etcDir(), err)
		}
		if r := runHost("ip", "netns", "del", n.Name); r.Err != nil {
			t.Errorf("deleting namespace: %v", r)
		}
	})
	n.Must(t, "ip", "link", "set", "lo", "up")
	return n
}

// Path is the namespace's file, for setns(2).
func (n *Netns) Path() string { return filepath.Join("/run/netns", n.Name) }

func (n *Netns) String() string { return n.Name }

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9]+`)

// UniqueName returns a name no other test, package or run uses: "dst-",
// six random hex digits, and the test's name, shortened, to tell leftovers
// apart. Namespaces are named with it, and so are the containers of
// podmantest.
func UniqueName(t testing.TB) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	tag := strings.Trim(unsafeChars.ReplaceAllString(t.Name(), "-"), "-")
	if len(tag) > 40 {
		tag = tag[len(tag)-40:]
	}
	return "dst-" + hex.EncodeToString(b) + "-" + tag
}

// etcDir holds the files `ip netns exec` mounts over /etc.
func (n *Netns) etcDir() string { return filepath.Join("/etc/netns", n.Name) }

// WriteEtc writes a file that every later command run in the namespace
// sees as /etc/NAME (resolv.conf, hosts, nsswitch.conf), while the machine's
// own stays as it is. Go code run with Do sees the machine's.
func (n *Netns) WriteEtc(t testing.TB, name, content string) {
	t.Helper()
	if err := os.MkdirAll(n.etcDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(n.etcDir(), name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	n.etc.Store(true)
}
