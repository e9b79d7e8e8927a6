package netns

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Addresses: documentation ranges only (RFC 5737, RFC 3849). Each scenario
// has namespaces of its own, so the same addresses serve every scenario.
const (
	podIP4     = "192.0.2.10"
	podIP6     = "2001:db8::10"
	upstreamV4 = "192.0.2.2"    // Unbound, DoT on 853
	upstreamV6 = "2001:db8::2"  // the same Unbound
	kubeDNS4   = "192.0.2.53"   // the pod's resolv.conf names these;
	kubeDNS6   = "2001:db8::53" // nothing listens on their port 53
	podIface   = "eth0"
)

// topology is one pod namespace and one upstream namespace joined by a veth
// pair, as a pod and the node's network would be.
type topology struct {
	id       string
	pod, up  *node
	etcNetns string // /etc/netns/<pod>: files `ip netns exec` mounts over /etc
}

// newTopology creates the namespaces with unique names (parallel test
// packages and scenarios must not collide) and registers their removal, which
// t.Cleanup runs after the processes started later have been stopped.
func newTopology(t *testing.T, tag string) *topology {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	id := "dse" + hex.EncodeToString(b) + tag // e.g. dse1a2b3cn
	tp := &topology{
		id:       id,
		pod:      &node{name: id + "-pod"},
		up:       &node{name: id + "-up"},
		etcNetns: filepath.Join("/etc/netns", id+"-pod"),
	}
	podVeth, upVeth := id+"p", id+"u" // at most 15 bytes (IFNAMSIZ)
	if len(podVeth) > 15 {
		t.Fatalf("interface name %q too long", podVeth)
	}

	host(t, "ip", "netns", "add", tp.pod.name)
	t.Cleanup(func() { delNetns(t, tp.pod.name) })
	host(t, "ip", "netns", "add", tp.up.name)
	t.Cleanup(func() { delNetns(t, tp.up.name) })
	t.Cleanup(func() {
		if err := os.RemoveAll(tp.etcNetns); err != nil {
			t.Errorf("removing %s: %v", tp.etcNetns, err)
		}
	})

	// Created directly inside the namespaces: nothing appears, even for a
	// moment, in the namespace the test runs in.
	host(t, "ip", "link", "add", podVeth, "netns", tp.pod.name, "type", "veth", "peer", "name", upVeth, "netns", tp.up.name)
	tp.pod.must(t, "ip", "link", "set", podVeth, "name", podIface)
	tp.up.must(t, "ip", "link", "set", upVeth, "name", podIface)

	for _, n := range []*node{tp.pod, tp.up} {
		n.must(t, "ip", "link", "set", "lo", "up")
		// No duplicate address detection on this private link, for the
		// kernel's own link-local address too: addresses are usable at once
		// instead of after a second of DAD.
		n.must(t, "sysctl", "-qw", "net.ipv6.conf."+podIface+".accept_dad=0")
	}
	tp.pod.must(t, "ip", "addr", "add", podIP4+"/24", "dev", podIface)
	tp.pod.must(t, "ip", "-6", "addr", "add", podIP6+"/64", "dev", podIface, "nodad")
	tp.up.must(t, "ip", "addr", "add", upstreamV4+"/24", "dev", podIface)
	tp.up.must(t, "ip", "addr", "add", kubeDNS4+"/24", "dev", podIface)
	tp.up.must(t, "ip", "-6", "addr", "add", upstreamV6+"/64", "dev", podIface, "nodad")
	tp.up.must(t, "ip", "-6", "addr", "add", kubeDNS6+"/64", "dev", podIface, "nodad")
	for _, n := range []*node{tp.pod, tp.up} {
		n.must(t, "ip", "link", "set", podIface, "up")
	}
	for _, n := range []*node{tp.pod, tp.up} {
		waitFor(t, n.name+" addresses usable", 10*time.Second, func() error { return addressesUsable(n) })
	}
	return tp
}

// addressesUsable: the link is up at both ends and no IPv6 address is still
// tentative (nodad makes them usable at once; checked rather than assumed).
func addressesUsable(n *node) error {
	r := n.exec(rootUID, nil, 5*time.Second, "ip", "-o", "link", "show", "dev", podIface)
	if r.err != nil {
		return r.err
	}
	if !strings.Contains(r.stdout, "LOWER_UP") {
		return fmt.Errorf("%s not up yet: %s", podIface, r.stdout)
	}
	r = n.exec(rootUID, nil, 5*time.Second, "ip", "-o", "-6", "addr", "show", "dev", podIface, "tentative")
	if r.err != nil {
		return r.err
	}
	if strings.TrimSpace(r.stdout) != "" {
		return fmt.Errorf("tentative addresses: %s", r.stdout)
	}
	return nil
}

func delNetns(t *testing.T, name string) {
	c := exec.Command(lookPath("ip"), "netns", "del", name)
	c.Env = cmdEnv
	if out, err := c.CombinedOutput(); err != nil {
		t.Errorf("deleting namespace %s: %v: %s", name, err, out)
	}
}

// writeEtc writes a file that every later `ip netns exec` in the pod mounts
// over /etc/<name>. resolv.conf names kube-dns; nsswitch.conf and hosts are
// pinned too, so that glibc asks DNS whatever the host's own configuration.
func (tp *topology) writeEtc(t testing.TB, name, content string) {
	t.Helper()
	if err := os.MkdirAll(tp.etcNetns, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tp.etcNetns, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// resolvConf renders a pod resolv.conf. options timeout:1 attempts:1 keep
// the failure cases fast; use-vc makes glibc query over TCP.
func resolvConf(nameservers []string, tcp bool) string {
	var b strings.Builder
	b.WriteString("search default.svc.cluster.local svc.cluster.local cluster.local\n")
	for _, ns := range nameservers {
		b.WriteString("nameserver " + ns + "\n")
	}
	b.WriteString("options ndots:1 timeout:1 attempts:1")
	if tcp {
		b.WriteString(" use-vc")
	}
	b.WriteString("\n")
	return b.String()
}
