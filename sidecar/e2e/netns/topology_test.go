package netns

import (
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
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
	pod, up *netnstest.Netns
}

func newTopology(t *testing.T) *topology {
	t.Helper()
	tp := &topology{pod: netnstest.New(t), up: netnstest.New(t)}
	netnstest.Veth(t,
		netnstest.End{NS: tp.pod, Name: podIface, Addrs: []string{podIP4 + "/24", podIP6 + "/64"}},
		netnstest.End{NS: tp.up, Name: podIface, Addrs: []string{upstreamV4 + "/24", kubeDNS4 + "/24", upstreamV6 + "/64", kubeDNS6 + "/64"}})
	return tp
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
