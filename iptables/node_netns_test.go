package iptables

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
)

// The node-level mode for real: a "node" network namespace and a "pod"
// namespace joined by a veth pair, node-apply run in the node one, and a DNS
// server in it as the sidecar's UID with no capabilities at all, listening on
// NODE_LOCAL_ADDRESS:BIND_PORT as manifests/node's sidecar does. Addresses
// exist only in these namespaces.

const (
	nodeLocal  = "169.254.20.53" // the script's default NODE_LOCAL_ADDRESS
	nodeSide   = "192.0.2.1"     // node end of the veth
	podSide    = "192.0.2.2"     // pod end of the veth
	sidecarUID = "10053"
)

// asSidecar runs a command the way the node DaemonSet's sidecar container
// runs: its UID and GID, no capability in any set, no privilege escalation.
var asSidecar = []string{"setpriv", "--reuid=" + sidecarUID, "--regid=" + sidecarUID, "--clear-groups",
	"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"}

// asNodeInit runs a command as manifests/node's init container: root with
// NET_ADMIN and NET_RAW only, no privilege escalation.
var asNodeInit = []string{"setpriv", "--inh-caps=-all", "--bounding-set=-all,+net_admin,+net_raw", "--no-new-privs"}

type nodeLab struct{ node, pod netns }

func newNodeLab(t *testing.T) nodeLab {
	t.Helper()
	lab := nodeLab{node: newNetns(t), pod: newNetns(t)}
	netnstest.Veth(t, netnstest.End{NS: lab.node.Netns, Name: "veth-pod", Addrs: []string{nodeSide + "/24"}},
		netnstest.End{NS: lab.pod.Netns, Name: "eth0", Addrs: []string{podSide + "/24"}})
	lab.pod.Must(t, "ip", "route", "add", "default", "via", nodeSide)
	return lab
}

// addNodeForeign leaves rules as kube-proxy and a CNI's hostPort plugin would:
// chains of their own jumped to from PREROUTING and OUTPUT, one of which
// DNATs port 53 of every local address elsewhere. Our jumps must come first
// for queries to reach the sidecar. An IPv6 rule checks that node mode leaves
// ip6tables alone.
func (n netns) addNodeForeign(t *testing.T, backend string) {
	t.Helper()
	payloads := map[string]string{
		"iptables": "*nat\n:KUBE-SERVICES - [0:0]\n:CNI-HOSTPORT-DNAT - [0:0]\n" +
			"-A PREROUTING -m comment --comment \"foreign/kube-services\" -j KUBE-SERVICES\n" +
			"-A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment \"foreign/hostport\" -j CNI-HOSTPORT-DNAT\n" +
			"-A OUTPUT -m comment --comment \"foreign/kube-services\" -j KUBE-SERVICES\n" +
			"-A OUTPUT -m addrtype --dst-type LOCAL -m comment --comment \"foreign/hostport\" -j CNI-HOSTPORT-DNAT\n" +
			"-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m udp --dport 53 -m comment --comment \"foreign/kube-dns\" -j DNAT --to-destination 192.0.2.99:53\n" +
			"-A CNI-HOSTPORT-DNAT -p udp -m udp --dport 53 -m comment --comment \"foreign/hostport-53\" -j DNAT --to-destination " + nodeSide + ":5300\n" +
			"-A CNI-HOSTPORT-DNAT -p tcp -m tcp --dport 53 -m comment --comment \"foreign/hostport-53\" -j DNAT --to-destination " + nodeSide + ":5300\n" +
			"COMMIT\n",
		"ip6tables": "*nat\n-A OUTPUT -p udp -m udp --dport 53 -m comment --comment \"foreign/v6\" -j REDIRECT --to-ports 15053\nCOMMIT\n",
	}
	for _, f := range fams() {
		if r := n.RunInput(nil, payloads[f], f+"-"+backend+"-restore", "--noflush"); r.Err != nil {
			t.Fatalf("%v", r)
		}
	}
}

var addrLine = regexp.MustCompile(`^\d+: (\S+)\s+inet (\S+) .*?(\S+)\\`)

// addrs lists the namespace's IPv4 addresses as "device address label".
func (n netns) addrs(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(n.Must(t, "ip", "-4", "-o", "addr", "show")), "\n") {
		m := addrLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("cannot parse ip addr line %q", l)
		}
		out = append(out, m[1]+" "+m[2]+" "+m[3])
	}
	return out
}

// ourAddrs are the addresses labelled as the script's.
func (n netns) ourAddrs(t *testing.T) []string {
	t.Helper()
	var ours []string
	for _, a := range n.addrs(t) {
		if strings.HasSuffix(a, " lo:dot-sidecar") {
			ours = append(ours, a)
		}
	}
	return ours
}

func isOursNode(l string) bool { return strings.Contains(l, "DOT_SIDECAR_NODE") }

func splitNode(save string) (ours, foreign []string) {
	for _, l := range strings.Split(save, "\n") {
		if isOursNode(l) {
			ours = append(ours, l)
		} else {
			foreign = append(foreign, l)
		}
	}
	return ours, foreign
}

// nodeExpected derives, from node-dry-run with env, what iptables-save must
// show of ours after node-apply: the chain, the jumps (as save prints an
// inserted rule) and the chain's rules in order.
func nodeExpected(t *testing.T, env []string) []string {
	t.Helper()
	res := run(t, nil, env, script, "node-dry-run")
	if res.code != 0 {
		t.Fatalf("node-dry-run: %s", res.stderr)
	}
	_, v4 := splitNodeDryRun(t, res.stdout)
	var jumps, rules []string
	for _, l := range strings.Split(strings.TrimSpace(v4), "\n") {
		switch {
		case strings.HasPrefix(l, "-I "):
			chain, rest, _ := strings.Cut(strings.TrimPrefix(l, "-I "), " 1 ")
			jumps = append(jumps, "-A "+chain+" "+rest)
		case strings.HasPrefix(l, "-A "):
			rules = append(rules, l)
		}
	}
	return append(append([]string{":DOT_SIDECAR_NODE -"}, jumps...), rules...)
}

// nodeState is all node-apply may change: both families' nat tables in both
// backends and the addresses.
type nodeState struct {
	nat   map[string][2]string
	addrs string
}

func (n netns) nodeState(t *testing.T) nodeState {
	t.Helper()
	return nodeState{
		nat:   map[string][2]string{"nft": n.state(t, "nft"), "legacy": n.state(t, "legacy")},
		addrs: strings.Join(n.addrs(t), "\n"),
	}
}

func (s nodeState) equal(o nodeState) bool {
	return s.addrs == o.addrs && s.nat["nft"] == o.nat["nft"] && s.nat["legacy"] == o.nat["legacy"]
}

func TestNodeModeInNamespaces(t *testing.T) {
	t.Parallel()
	requireNetnsTools(t)
	bin := helperBinary(t)
	want := nodeExpected(t, nil)

	for _, backend := range []string{"nft", "legacy"} {
		other := map[string]string{"nft": "legacy", "legacy": "nft"}[backend]
		mode := []string{"IPTABLES_MODE=" + backend}

		t.Run(backend+"/pods-and-node-reach-the-unprivileged-sidecar", func(t *testing.T) {
			t.Parallel()
			lab := newNodeLab(t)
			lab.node.addNodeForeign(t, backend)
			before := lab.node.nodeState(t)

			// As the DaemonSet's init container: root with NET_ADMIN and NET_RAW only.
			res := lab.node.script(t, mode, asNodeInit, "node-apply")
			if res.code != 0 || !strings.Contains(res.stderr, "backend: "+backend+" (IPTABLES_MODE="+backend+")") {
				t.Fatalf("node-apply: exit %d, stderr:\n%s", res.code, res.stderr)
			}
			after := lab.node.nodeState(t)
			v4 := after.nat[backend][0]
			ours, foreign := splitNode(v4)
			if !slices.Equal(ours, want) {
				t.Errorf("our rules\n%s\nwant\n%s", strings.Join(ours, "\n"), strings.Join(want, "\n"))
			}
			if got := strings.Join(foreign, "\n"); got != before.nat[backend][0] {
				t.Errorf("node-apply changed rules that are not ours:\n%s\nwas\n%s", got, before.nat[backend][0])
			}
			for _, chain := range []string{"PREROUTING", "OUTPUT"} {
				if first := firstRule(v4, chain); !isOursNode(first) {
					t.Errorf("first %s rule is %q, want our jump", chain, first)
				}
			}
			if after.nat[backend][1] != before.nat[backend][1] || after.nat[other] != before.nat[other] {
				t.Errorf("node-apply touched ip6tables or the %s backend:\n%v\nwas\n%v", other, after.nat, before.nat)
			}
			if got := lab.node.ourAddrs(t); !slices.Equal(got, []string{"lo " + nodeLocal + "/32 lo:dot-sidecar"}) {
				t.Errorf("our addresses %q, want %s/32 on lo labelled lo:dot-sidecar", got, nodeLocal)
			}

			probed := startDNSServer(t, lab.node, bin, asSidecar, nodeLocal+":5053", nodeLocal+":53")
			// Why node mode forwards at all: without a capability the
			// sidecar's UID cannot bind port 53 itself.
			if probed != "EACCES" {
				t.Errorf("binding %s:53 as uid %s without capabilities: %q, want EACCES", nodeLocal, sidecarUID, probed)
			}
			for _, q := range []struct {
				from       netns
				name       string
				network    string
				clientAddr string
			}{
				// PREROUTING: the pod's address arrives unchanged (DNAT, no SNAT).
				{lab.pod, "pod", "udp", podSide},
				{lab.pod, "pod", "tcp", podSide},
				// OUTPUT: the node's own processes.
				{lab.node, "node", "udp", nodeLocal},
				{lab.node, "node", "tcp", nodeLocal},
			} {
				text, ok := query(t, q.from, bin, q.network, nodeLocal+":53")
				wantPrefix := "uid=" + sidecarUID + " proto=" + q.network + " client=" + q.clientAddr + ":"
				if !ok || !strings.HasPrefix(text, wantPrefix) {
					t.Errorf("%s over %s to %s:53: %q, want an answer starting %q", q.name, q.network, nodeLocal, text, wantPrefix)
				}
			}

			// Again, as the init container does on every pod restart: nothing
			// changes, and the running sidecar keeps answering.
			if res := lab.node.script(t, mode, asNodeInit, "node-apply"); res.code != 0 || !strings.Contains(res.stderr, "already on lo") {
				t.Fatalf("second node-apply: exit %d: %s", res.code, res.stderr)
			}
			if again := lab.node.nodeState(t); !again.equal(after) {
				t.Errorf("node-apply twice differs from once:\n%+v\nonce:\n%+v", again, after)
			}
			if text, ok := query(t, lab.pod, bin, "udp", nodeLocal+":53"); !ok {
				t.Errorf("after the second node-apply: %s", text)
			}

			for i := 1; i <= 2; i++ {
				if res := lab.node.script(t, mode, asNodeInit, "node-cleanup"); res.code != 0 {
					t.Fatalf("node-cleanup #%d: exit %d: %s", i, res.code, res.stderr)
				}
				if got := lab.node.nodeState(t); !got.equal(before) {
					t.Errorf("node-cleanup #%d left\n%+v\nwant exactly what was there before\n%+v", i, got, before)
				}
			}
			// With the address gone, the node has no route to it any more.
			if text, ok := query(t, lab.node, bin, "udp", nodeLocal+":53"); ok || !strings.Contains(text, "network is unreachable") {
				t.Errorf("after node-cleanup: %q, want network is unreachable", text)
			}
		})

		t.Run(backend+"/address-change", func(t *testing.T) {
			t.Parallel()
			lab := newNodeLab(t)
			if res := lab.node.script(t, mode, nil, "node-apply"); res.code != 0 {
				t.Fatalf("node-apply: %s", res.stderr)
			}
			env := append([]string{"NODE_LOCAL_ADDRESS=169.254.20.54"}, mode...)
			res := lab.node.script(t, env, nil, "node-apply")
			if res.code != 0 || !strings.Contains(res.stderr, "removed our former "+nodeLocal+"/32") {
				t.Fatalf("node-apply with a new address: exit %d: %s", res.code, res.stderr)
			}
			if got := lab.node.ourAddrs(t); !slices.Equal(got, []string{"lo 169.254.20.54/32 lo:dot-sidecar"}) {
				t.Errorf("our addresses %q, want only the new one", got)
			}
			if ours, _ := splitNode(lab.node.nat(t, "iptables", backend)); !slices.Equal(ours, nodeExpected(t, env)) {
				t.Errorf("our rules after the change:\n%s\nwant only the new address's", strings.Join(ours, "\n"))
			}
			if res := lab.node.script(t, env, nil, "node-cleanup"); res.code != 0 {
				t.Fatalf("node-cleanup: %s", res.stderr)
			}
			if s := lab.node.nat(t, "iptables", backend); strings.Contains(s, "DOT_SIDECAR") || len(lab.node.ourAddrs(t)) > 0 {
				t.Errorf("node-cleanup left rules or addresses:\n%s\n%q", s, lab.node.ourAddrs(t))
			}
		})

		t.Run(backend+"/address-not-ours", func(t *testing.T) {
			t.Parallel()
			lab := newNodeLab(t)
			// Applied before with another address: a refused run must not
			// have removed it either.
			if res := lab.node.script(t, append([]string{"NODE_LOCAL_ADDRESS=169.254.20.54"}, mode...), nil, "node-apply"); res.code != 0 {
				t.Fatalf("node-apply: %s", res.stderr)
			}
			lab.node.Must(t, "ip", "addr", "add", nodeLocal+"/32", "dev", "veth-pod")
			before := lab.node.nodeState(t)
			res := lab.node.script(t, mode, nil, "node-apply")
			if res.code != exitFail || !strings.Contains(res.stderr, "not ours") || !strings.Contains(res.stderr, "veth-pod") {
				t.Errorf("exit %d, want %d naming the holder; stderr:\n%s", res.code, exitFail, res.stderr)
			}
			if got := lab.node.nodeState(t); !got.equal(before) {
				t.Errorf("a refused node-apply changed the node:\n%+v\nwas\n%+v", got, before)
			}
		})

		t.Run(backend+"/commit-fails", func(t *testing.T) {
			t.Parallel()
			lab := newNodeLab(t)
			fail := append([]string{"DOT_SIDECAR_TEST_FAIL=node-apply"}, mode...)
			for _, preApplied := range []bool{false, true} {
				if preApplied {
					if res := lab.node.script(t, mode, nil, "node-apply"); res.code != 0 {
						t.Fatalf("node-apply: %s", res.stderr)
					}
				}
				before := lab.node.nodeState(t)
				res := lab.node.script(t, fail, nil, "node-apply")
				if res.code != exitFail || !strings.Contains(res.stderr, "applying failed") || !strings.Contains(res.stderr, "rolled back") {
					t.Errorf("pre-applied %v: exit %d, want %d with the rollback named; stderr:\n%s", preApplied, res.code, exitFail, res.stderr)
				}
				if got := lab.node.nodeState(t); !got.equal(before) {
					t.Errorf("pre-applied %v: after the failed node-apply\n%+v\nwant as before\n%+v", preApplied, got, before)
				}
			}
		})

		t.Run(backend+"/privileges", func(t *testing.T) {
			t.Parallel()
			lab := newNodeLab(t)
			before := lab.node.nodeState(t)
			cases := []privCase{
				{"non-root", asNobody, "missing CAP_NET_ADMIN"},
				{"as the sidecar", asSidecar, "missing CAP_NET_ADMIN"},
				{"root without NET_ADMIN", withoutNetAdmin, "missing CAP_NET_ADMIN"},
			}
			if backend == "legacy" {
				cases = append(cases, privCase{"root with NET_ADMIN alone", []string{"setpriv", "--inh-caps=-all", "--bounding-set=-all,+net_admin"}, "missing CAP_NET_RAW"})
			}
			for _, tc := range cases {
				for _, cmd := range []string{"node-apply", "node-cleanup"} {
					res := lab.node.script(t, mode, tc.wrap, cmd)
					where := !strings.Contains(tc.msg, "NET_ADMIN") || strings.Contains(res.stderr, "in the node's network namespace")
					if res.code != exitPriv || !strings.Contains(res.stderr, tc.msg) || !where {
						t.Errorf("%s %s: exit %d, want %d and %q; stderr:\n%s", tc.name, cmd, res.code, exitPriv, tc.msg, res.stderr)
					}
				}
			}
			if got := lab.node.nodeState(t); !got.equal(before) {
				t.Errorf("an unprivileged run changed the node:\n%+v", got)
			}
			// What suffices: the manifest's NET_ADMIN and NET_RAW; with nft,
			// NET_ADMIN alone (NET_RAW is there for nodes on legacy).
			enough := [][]string{asNodeInit}
			if backend == "nft" {
				enough = append(enough, []string{"setpriv", "--inh-caps=-all", "--bounding-set=-all,+net_admin", "--no-new-privs"})
			}
			for _, wrap := range enough {
				for _, cmd := range []string{"node-apply", "node-cleanup"} {
					if res := lab.node.script(t, mode, wrap, cmd); res.code != 0 {
						t.Errorf("%v %s: exit %d: %s", wrap, cmd, res.code, res.stderr)
					}
				}
			}
		})
	}
}
