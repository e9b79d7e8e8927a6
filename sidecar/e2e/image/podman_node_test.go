package image

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/podmantest"
)

// Addresses of the node-level test: the node reaches the upstream on
// 192.0.2.0/24 and its pods on 198.51.100.0/24.
const (
	nodeIP       = "192.0.2.10"
	nodePodsIP   = "198.51.100.1"
	nodePodIP    = "198.51.100.10"
	nodeLocalDNS = "169.254.20.53" // manifests/node's NODE_LOCAL_ADDRESS
)

// TestPodmanNode runs manifests/node's DaemonSet from the image in a
// namespace standing in for a node's: its init container (dns-redirect.sh
// node-apply, as root with NET_ADMIN and NET_RAW, the node's xtables lock
// mounted) gives the node the listening address and the DNAT of its port
// 53, and the sidecar beside it answers the node's own lookups (nat
// OUTPUT) and a pod's, sent across a veth (nat PREROUTING), over UDP and
// TCP, through DoT. node-cleanup removes the rules and the address.
func TestPodmanNode(t *testing.T) {
	t.Parallel()
	e := podmantest.New(t)
	testkit.RequireTools(t, "iptables-save", "ip6tables-save")
	img := e.ProjectImage(t)
	base := e.BaseImages(t)
	daemonSet := renderPod(t, "node", "DaemonSet/dot-sidecar-node")
	// The clients are manifests/base's application container.
	basePod := renderPod(t, "base", "Deployment/dns-client")
	app := basePod.container(t, "app")

	node, out, pod := netnstest.New(t), netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, netnstest.End{NS: node, Name: "eth0", Addrs: []string{nodeIP + "/24"}},
		netnstest.End{NS: out, Name: "eth0", Addrs: []string{upstreamV4 + "/24"}})
	netnstest.Veth(t, netnstest.End{NS: node, Name: "pods0", Addrs: []string{nodePodsIP + "/24"}},
		netnstest.End{NS: pod, Name: "eth0", Addrs: []string{nodePodIP + "/24"}})
	pod.Must(t, "ip", "route", "add", "default", "via", nodePodsIP)
	up := startUpstream(t, out, upstreamV4)

	// The node's xtables lock, which the DaemonSet mounts from the host.
	lock := filepath.Join(t.TempDir(), "xtables.lock")
	if err := os.WriteFile(lock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	project := runOptions{image: img.Ref, network: podmantest.Netns(node), settings: up.settings(),
		hostPath: map[string]string{"xtables-lock": lock}}
	initSpec := daemonSet.runSpec(t, daemonSet.container(t, "dot-sidecar-node-init"), project)
	sidecarOpts := project
	sidecarOpts.volumes = []string{up.caVolume()}
	sidecarSpec := daemonSet.runSpec(t, daemonSet.container(t, "dot-sidecar"), sidecarOpts)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	if r := e.Run(ctx, t, initSpec); r.Err != nil || !strings.Contains(r.Stderr, "dns-redirect: applied:") {
		t.Fatalf("node-apply: %v", r)
	}
	if addrs := node.Must(t, "ip", "-4", "-o", "addr", "show", "dev", "lo"); !strings.Contains(addrs, nodeLocalDNS+"/32") || !strings.Contains(addrs, "lo:dot-sidecar") {
		t.Fatalf("after node-apply, lo lacks %s/32 labelled lo:dot-sidecar:\n%s", nodeLocalDNS, addrs)
	}
	rules := natRules(t, node, "DOT_SIDECAR_NODE")
	for _, want := range []string{"-A PREROUTING -d " + nodeLocalDNS + "/32", "-A OUTPUT -d " + nodeLocalDNS + "/32", "--to-destination " + nodeLocalDNS + ":5053"} {
		if !strings.Contains(rules, want) {
			t.Errorf("after node-apply the node's nat rules lack %q:\n%s", want, rules)
		}
	}

	sidecar := e.Start(t, sidecarSpec)
	if r := sidecar.Exec(ctx, nil, "/opt/dot-sidecar/entrypoint.sh", "wait"); r.Err != nil {
		t.Fatalf("%v", r)
	}
	if st := procStatus(t, sidecar); st["Uid"] != "10053 10053 10053 10053" || st["CapEff"] != "0000000000000000" {
		t.Errorf("the node's sidecar runs as %q with capabilities %q, want 10053 and none", st["Uid"], st["CapEff"])
	}

	before := up.dotQueries(t)
	i := 0
	for _, client := range []struct {
		where string
		ns    *netnstest.Netns
	}{{"the node itself (nat OUTPUT)", node}, {"a pod (nat PREROUTING)", pod}} {
		spec := basePod.runSpec(t, app, runOptions{image: base.Debian, network: podmantest.Netns(client.ns)})
		for _, tcp := range []bool{false, true} {
			rec := up.unbound.Names[i]
			i++
			name := strings.TrimSuffix(rec.Name, ".")
			path := resolverPath{nameserver: nodeLocalDNS, tcp: tcp}
			if r := lookup(ctx, t, e, spec, path, name); r.Err != nil || !strings.Contains(r.Stdout, rec.A.String()+" ") {
				t.Errorf("from %s, %s: getent ahosts %s, want %s:\n%v", client.where, path, name, rec.A, r)
			}
		}
	}
	if got := up.dotQueries(t) - before; got < float64(i) {
		t.Errorf("Unbound received %v queries over TLS for %d lookups", got, i)
	}

	cleanup := initSpec
	cleanup.Name, cleanup.Args = "node-cleanup", []string{"node-cleanup"}
	if r := e.Run(ctx, t, cleanup); r.Err != nil {
		t.Fatalf("node-cleanup: %v", r)
	}
	if rules := natRules(t, node, "DOT_SIDECAR"); rules != "" {
		t.Errorf("rules left after node-cleanup:\n%s", rules)
	}
	if addrs := node.Must(t, "ip", "-4", "-o", "addr", "show", "dev", "lo"); strings.Contains(addrs, nodeLocalDNS) {
		t.Errorf("%s still on lo after node-cleanup:\n%s", nodeLocalDNS, addrs)
	}
}
