package iptables

import (
	"path/filepath"
	"strings"
	"testing"
)

// The node-level mode's commands (node-apply, node-cleanup, node-dry-run):
// dry-run goldens, the rules they encode stated as properties, and settings
// refused before anything touches the node. node_netns_test.go runs them for
// real.

// Markers of node-dry-run's sections.
const (
	nodeAddrMarker = "# ==== address: ip ====\n"
	nodeV4Marker   = "# ==== IPv4: iptables-restore --noflush ====\n"
	nodeV6Marker   = "# ==== IPv6: not touched: node mode is IPv4 only ====\n"
)

// splitNodeDryRun cuts node-dry-run output into its ip command and its IPv4
// restore payload, and checks that IPv6 is declared untouched.
func splitNodeDryRun(t *testing.T, out string) (ipCmd, v4 string) {
	t.Helper()
	ia, i4, i6 := strings.Index(out, nodeAddrMarker), strings.Index(out, nodeV4Marker), strings.Index(out, nodeV6Marker)
	if ia < 0 || i4 < ia || i6 < i4 || !strings.HasSuffix(out, nodeV6Marker) {
		t.Fatalf("node-dry-run output lacks its section markers in order:\n%s", out)
	}
	return strings.TrimSpace(out[ia+len(nodeAddrMarker) : i4]), out[i4+len(nodeV4Marker) : i6]
}

func TestNodeDryRunGolden(t *testing.T) {
	tests := []struct {
		name string
		env  []string
	}{
		{name: "node-defaults"},
		{name: "node-custom", env: []string{"NODE_LOCAL_ADDRESS=169.254.0.10", "BIND_PORT=15053", "IPTABLES_MODE=legacy"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := run(t, nil, tt.env, script, "node-dry-run")
			if res.code != 0 {
				t.Fatalf("node-dry-run exit %d: %s", res.code, res.stderr)
			}
			compareGolden(t, filepath.Join("testdata", tt.name+".golden"), res.stdout)
		})
	}
}

// TestNodeDryRunProperties checks what the node goldens encode, as rules, so
// that a careless REFRESH_GOLDEN cannot bless a broken payload.
func TestNodeDryRunProperties(t *testing.T) {
	for _, tc := range []struct{ addr, port string }{{"169.254.20.53", "5053"}, {"10.0.0.10", "15053"}} {
		t.Run(tc.addr, func(t *testing.T) {
			res := run(t, nil, []string{"NODE_LOCAL_ADDRESS=" + tc.addr, "BIND_PORT=" + tc.port}, script, "node-dry-run")
			if res.code != 0 {
				t.Fatalf("exit %d: %s", res.code, res.stderr)
			}
			ipCmd, v4 := splitNodeDryRun(t, res.stdout)
			if want := "ip -4 addr add " + tc.addr + "/32 dev lo label lo:dot-sidecar"; ipCmd != want {
				t.Errorf("address step %q, want %q", ipCmd, want)
			}
			lines := strings.Split(strings.TrimSpace(v4), "\n")
			if lines[0] != "*nat" || lines[1] != ":DOT_SIDECAR_NODE - [0:0]" || lines[len(lines)-1] != "COMMIT" {
				t.Fatalf("want *nat, our chain declaration first and COMMIT last:\n%s", v4)
			}
			dst := "-d " + tc.addr + "/32 "
			dnat := "-j DNAT --to-destination " + tc.addr + ":" + tc.port
			var jumps []string
			protos := map[string]bool{}
			for _, l := range lines[2 : len(lines)-1] {
				if !strings.Contains(l, `-m comment --comment "dot-sidecar/`) {
					t.Errorf("rule without a dot-sidecar comment: %s", l)
				}
				if !strings.Contains(l, dst) {
					t.Errorf("rule not limited to the node-local address (%s): %s", dst, l)
				}
				switch {
				case strings.HasSuffix(l, "-j DOT_SIDECAR_NODE"):
					// Position 1: ahead of hostPort or container-engine DNATs
					// that match any local address.
					chain, _, _ := strings.Cut(strings.TrimPrefix(l, "-I "), " ")
					if !strings.HasPrefix(l, "-I "+chain+" 1 ") {
						t.Errorf("jump not inserted first: %s", l)
					}
					jumps = append(jumps, chain)
				case strings.HasPrefix(l, "-A DOT_SIDECAR_NODE ") && strings.HasSuffix(l, dnat):
					for _, p := range []string{"udp", "tcp"} {
						if strings.Contains(l, "-p "+p+" -m "+p+" --dport 53 ") {
							protos[p] = true
						}
					}
				default:
					t.Errorf("rule touches something not ours or is unexpected: %s", l)
				}
			}
			if strings.Join(jumps, ",") != "PREROUTING,OUTPUT" {
				t.Errorf("jumps from %v, want PREROUTING (pods) and OUTPUT (the node's processes)", jumps)
			}
			if !protos["udp"] || !protos["tcp"] {
				t.Errorf("DNAT of port 53 for %v, want udp and tcp", protos)
			}
		})
	}
}

func TestNodeUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  []string
		msg  string
	}{
		{"ipv6 address", []string{"node-dry-run"}, []string{"NODE_LOCAL_ADDRESS=fd00::53"}, "node mode is IPv4 only"},
		{"name", []string{"node-dry-run"}, []string{"NODE_LOCAL_ADDRESS=dns.local"}, "is not an IPv4 address"},
		{"three octets", []string{"node-dry-run"}, []string{"NODE_LOCAL_ADDRESS=169.254.20"}, "want four decimal octets"},
		{"five octets", []string{"node-dry-run"}, []string{"NODE_LOCAL_ADDRESS=169.254.20.53.1"}, "want four decimal octets"},
		{"empty octet", []string{"node-dry-run"}, []string{"NODE_LOCAL_ADDRESS=169.254..53"}, "is not an IPv4 address"},
		{"octet too big", []string{"node-dry-run"}, []string{"NODE_LOCAL_ADDRESS=169.254.256.53"}, "octet '256'"},
		{"octal-looking octet", []string{"node-dry-run"}, []string{"NODE_LOCAL_ADDRESS=169.254.020.53"}, "octet '020'"},
		{"with prefix length", []string{"node-dry-run"}, []string{"NODE_LOCAL_ADDRESS=169.254.20.53/32"}, "is not an IPv4 address"},
		{"loopback", []string{"node-dry-run"}, []string{"NODE_LOCAL_ADDRESS=127.0.0.53"}, "outside 0/8 and 127/8"},
		{"this network", []string{"node-dry-run"}, []string{"NODE_LOCAL_ADDRESS=0.0.0.0"}, "outside 0/8 and 127/8"},
		{"multicast", []string{"node-dry-run"}, []string{"NODE_LOCAL_ADDRESS=224.0.0.53"}, "unicast"},
		{"privileged port", []string{"node-dry-run"}, []string{"BIND_PORT=53"}, "BIND_PORT=53: node mode forwards port 53"},
		{"bad port", []string{"node-dry-run"}, []string{"BIND_PORT=x"}, "BIND_PORT=x is not a port number"},
		// Settings are checked before anything touches the node.
		{"apply with bad address", []string{"node-apply"}, []string{"NODE_LOCAL_ADDRESS=169.254.20.x"}, "is not an IPv4 address"},
		{"cleanup with bad address", []string{"node-cleanup"}, []string{"NODE_LOCAL_ADDRESS=::1"}, "IPv4 only"},
		{"extra argument", []string{"node-apply", "now"}, nil, "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := run(t, nil, tt.env, script, tt.args...)
			if res.code != exitUsage {
				t.Errorf("exit %d, want %d; stderr: %s", res.code, exitUsage, res.stderr)
			}
			if !strings.Contains(res.stderr, "dns-redirect: error: ") || !strings.Contains(res.stderr, tt.msg) {
				t.Errorf("stderr %q lacks %q", res.stderr, tt.msg)
			}
			if res.stdout != "" {
				t.Errorf("a failed run printed to stdout: %q", res.stdout)
			}
		})
	}
}

// TestNodeCommandsLeavePodModeAlone: the pod-mode dry-run is byte for byte
// what it was whatever the node settings say (they are read by node-* only).
func TestNodeCommandsLeavePodModeAlone(t *testing.T) {
	plain := run(t, nil, nil, script, "dry-run")
	withNode := run(t, nil, []string{"NODE_LOCAL_ADDRESS=not-an-address"}, script, "dry-run")
	if plain.code != 0 || withNode.code != 0 || plain.stdout != withNode.stdout {
		t.Errorf("pod dry-run changed with NODE_LOCAL_ADDRESS set: exit %d/%d\n%s\n---\n%s", plain.code, withNode.code, plain.stdout, withNode.stdout)
	}
	if strings.Contains(plain.stdout, "DOT_SIDECAR_NODE") {
		t.Errorf("pod dry-run mentions the node chain:\n%s", plain.stdout)
	}
}
