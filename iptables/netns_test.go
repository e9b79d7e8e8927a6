package iptables

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
)

// These tests run the script for real, as root, in network namespaces they
// create, for each backend. They stay on the script's own promises (rules,
// idempotency, foreign rules, rollback, privileges); the end-to-end story with
// a sidecar, an upstream and packet captures lives in sidecar/e2e/netns.

// netns is a namespace of netnstest's with the script's view of it.
type netns struct{ *netnstest.Netns }

// newNetns makes a throwaway namespace with loopback up (so ::1 exists and
// IPv6 is detected as present, as in a pod).
func newNetns(t *testing.T) netns { return netns{netnstest.New(t)} }

// script runs dns-redirect.sh in the namespace, through wrap (setpriv ...)
// when set, with env on top of the namespace's clean environment.
func (n netns) script(t *testing.T, env []string, wrap []string, args ...string) result {
	t.Helper()
	env = append([]string{"DOT_SIDECAR_IF_INET6=/proc/net/if_inet6"}, env...)
	r := n.Run(env, append(append(append([]string{}, wrap...), "/bin/sh", script), args...)...)
	if r.Code() < 0 {
		t.Fatalf("%v", r)
	}
	return result{code: r.Code(), stdout: r.Stdout, stderr: r.Stderr}
}

// requireNetnsTools skips (fails under CI) without root or the tools of
// both backends.
func requireNetnsTools(t *testing.T) {
	t.Helper()
	testkit.RequireRoot(t)
	testkit.RequireTools(t, "ip", "setpriv",
		"iptables-nft-save", "iptables-nft-restore", "ip6tables-nft-save", "ip6tables-nft-restore",
		"iptables-legacy-save", "iptables-legacy-restore", "ip6tables-legacy-save", "ip6tables-legacy-restore")
}

// privCase runs a script command under a wrapper that takes privileges
// away and expects exitPriv with msg on stderr.
type privCase struct {
	name string
	wrap []string
	msg  string
}

// Wrappers that take away what the script needs.
var (
	asNobody        = []string{"setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"}
	withoutNetAdmin = []string{"setpriv", "--bounding-set", "-net_admin"}
)

func fams() []string { return []string{"iptables", "ip6tables"} }

// nat returns the nat table of one family and backend (netnstest.NATTable).
func (n netns) nat(t *testing.T, family, backend string) string {
	t.Helper()
	return n.NATTable(t, family+"-"+backend+"-save")
}

// tables returns the nat table, then the raw table, of one family and
// backend: the two the script changes.
func (n netns) tables(t *testing.T, family, backend string) string {
	t.Helper()
	return n.nat(t, family, backend) + "\n" + n.Table(t, family+"-"+backend+"-save", "raw")
}

// state is the nat and raw tables of both families in one backend.
func (n netns) state(t *testing.T, backend string) [2]string {
	t.Helper()
	return [2]string{n.tables(t, "iptables", backend), n.tables(t, "ip6tables", backend)}
}

// addForeign leaves rules as a mesh's init step would: a chain of its own with
// a jump from OUTPUT, and a plain OUTPUT rule, in nat; in raw, a conntrack
// zone for its proxy's DNS, as Istio's DNS capture has.
func (n netns) addForeign(t *testing.T, backend string) {
	t.Helper()
	for _, f := range fams() {
		p := "*nat\n:MESH_OUTPUT - [0:0]\n" +
			"-A MESH_OUTPUT -p tcp -m tcp --dport 8080 -m comment --comment \"foreign/mesh\" -j REDIRECT --to-ports 15001\n" +
			"-A OUTPUT -p tcp -m comment --comment \"foreign/mesh-jump\" -j MESH_OUTPUT\n" +
			"-A OUTPUT -p udp -m udp --dport 53 -m owner --uid-owner 1337 -m comment --comment \"foreign/dns\" -j RETURN\nCOMMIT\n" +
			"*raw\n-A OUTPUT -p udp -m udp --dport 53 -m owner --uid-owner 1337 -m comment --comment \"foreign/dns-zone\" -j CT --zone 1\nCOMMIT\n"
		if r := n.RunInput(nil, p, f+"-"+backend+"-restore", "--noflush"); r.Err != nil {
			t.Fatalf("%v", r)
		}
	}
}

func isOurs(l string) bool {
	return strings.Contains(l, "DOT_SIDECAR_OUTPUT")
}

func split(save string) (ours, foreign []string) {
	for _, l := range strings.Split(save, "\n") {
		if isOurs(l) {
			ours = append(ours, l)
		} else {
			foreign = append(foreign, l)
		}
	}
	return ours, foreign
}

// expected derives, from the script's own dry-run, what iptables-save must
// show for each family after apply, in the nat and then the raw table: the
// chain declaration, the jump (as save prints an inserted rule) and the
// chain's rules in order.
func expected(t *testing.T) [2][]string {
	t.Helper()
	res := run(t, nil, []string{"DOT_SIDECAR_IF_INET6=/proc/net/if_inet6"}, script, "dry-run")
	if res.code != 0 {
		t.Fatalf("dry-run: %s", res.stderr)
	}
	v4, v6 := splitFamilies(t, res.stdout)
	var out [2][]string
	for i, p := range []string{v4, v6} {
		for _, tb := range splitTables(t, p) {
			var jump, rules []string
			for _, l := range tb.rules {
				switch {
				case strings.HasPrefix(l, "-I OUTPUT 1 "):
					jump = append(jump, "-A OUTPUT "+strings.TrimPrefix(l, "-I OUTPUT 1 "))
				case strings.HasPrefix(l, "-A "):
					rules = append(rules, l)
				}
			}
			out[i] = append(append(append(out[i], ":DOT_SIDECAR_OUTPUT -"), jump...), rules...)
		}
	}
	return out
}

func TestApplyInNamespace(t *testing.T) {
	t.Parallel()
	requireNetnsTools(t)
	want := expected(t)

	for _, backend := range []string{"nft", "legacy"} {
		other := map[string]string{"nft": "legacy", "legacy": "nft"}[backend]
		mode := []string{"IPTABLES_MODE=" + backend}

		t.Run(backend+"/apply-twice-cleanup", func(t *testing.T) {
			t.Parallel()
			n := newNetns(t)
			n.addForeign(t, backend)
			before := n.state(t, backend)

			res := n.script(t, mode, nil, "apply")
			if res.code != 0 || !strings.Contains(res.stderr, "backend: "+backend+" (IPTABLES_MODE="+backend+")") {
				t.Fatalf("apply: exit %d, stderr:\n%s", res.code, res.stderr)
			}
			after := n.state(t, backend)
			for i, f := range fams() {
				ours, foreign := split(after[i])
				if !slices.Equal(ours, want[i]) {
					t.Errorf("%s: our rules\n%s\nwant\n%s", f, strings.Join(ours, "\n"), strings.Join(want[i], "\n"))
				}
				if got := strings.Join(foreign, "\n"); got != before[i] {
					t.Errorf("%s: apply changed rules that are not ours:\n%s\nwas\n%s", f, got, before[i])
				}
				// Our jumps come first, ahead of a mesh's rules in OUTPUT.
				for _, tb := range []string{n.nat(t, f, backend), n.Table(t, f+"-"+backend+"-save", "raw")} {
					if first := firstRule(tb, "OUTPUT"); !isOurs(first) {
						t.Errorf("%s: first OUTPUT rule is %q, want our jump:\n%s", f, first, tb)
					}
				}
			}

			if res := n.script(t, mode, nil, "apply"); res.code != 0 {
				t.Fatalf("second apply: exit %d: %s", res.code, res.stderr)
			}
			if again := n.state(t, backend); again != after {
				t.Errorf("apply twice differs from once:\n%s\nonce:\n%s", again, after)
			}
			for _, f := range fams() {
				if s := n.tables(t, f, other); strings.Contains(s, "DOT_SIDECAR") {
					t.Errorf("%s: rules landed in the %s backend too:\n%s", f, other, s)
				}
			}

			for i := 0; i < 2; i++ {
				if res := n.script(t, mode, nil, "cleanup"); res.code != 0 {
					t.Fatalf("cleanup #%d: exit %d: %s", i+1, res.code, res.stderr)
				}
				if got := n.state(t, backend); got != before {
					t.Errorf("cleanup #%d left\n%s\nwant exactly the foreign rules\n%s", i+1, got, before)
				}
			}
		})

		t.Run(backend+"/rollback", func(t *testing.T) {
			t.Parallel()
			n := newNetns(t)
			n.addForeign(t, backend)
			before := n.state(t, backend)
			for _, tc := range []struct {
				name       string
				preApplied bool
				hook       string
			}{
				{"ipv6 fails on a fresh namespace", false, "ipv6-apply"},
				{"ipv6 fails on a re-run", true, "ipv6-apply"},
				{"ipv4 fails", false, "ipv4-apply"},
			} {
				if tc.preApplied {
					if res := n.script(t, mode, nil, "apply"); res.code != 0 {
						t.Fatalf("%s: apply: %s", tc.name, res.stderr)
					}
				}
				res := n.script(t, append([]string{"DOT_SIDECAR_TEST_FAIL=" + tc.hook}, mode...), nil, "apply")
				if res.code != exitFail || !strings.Contains(res.stderr, "applying failed") {
					t.Errorf("%s: exit %d, want %d with the failure named; stderr:\n%s", tc.name, res.code, exitFail, res.stderr)
				}
				if got := n.state(t, backend); got != before {
					t.Errorf("%s: after the failed apply\n%s\nwant nothing of ours in any family\n%s", tc.name, got, before)
				}
			}
		})

		t.Run(backend+"/kernel-rejects-payload", func(t *testing.T) {
			t.Parallel()
			n := newNetns(t)
			before := n.state(t, backend)
			rc := filepath.Join(t.TempDir(), "resolv.conf")
			// Passes the script's shape check; the kernel side (--test) rejects it.
			if err := os.WriteFile(rc, []byte("nameserver 10.96.0.300\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			res := n.script(t, append([]string{"REDIRECT_MODE=resolvconf", "RESOLV_CONF=" + rc}, mode...), nil, "apply")
			if res.code != exitFail || !strings.Contains(res.stderr, "nothing applied") {
				t.Errorf("exit %d, want %d and 'nothing applied'; stderr:\n%s", res.code, exitFail, res.stderr)
			}
			if got := n.state(t, backend); got != before {
				t.Errorf("a rejected payload changed the tables:\n%s", got)
			}
		})

		t.Run(backend+"/auto-detects", func(t *testing.T) {
			t.Parallel()
			n := newNetns(t)
			n.addForeign(t, backend) // the namespace's existing rules live in this backend
			res := n.script(t, []string{"IPTABLES_MODE=auto"}, nil, "apply")
			if res.code != 0 || !strings.Contains(res.stderr, "backend: "+backend+" (IPTABLES_MODE=auto") {
				t.Fatalf("exit %d; want backend %s chosen; stderr:\n%s", res.code, backend, res.stderr)
			}
			for i, f := range fams() {
				if ours, _ := split(n.state(t, backend)[i]); !slices.Equal(ours, want[i]) {
					t.Errorf("%s: auto did not apply into %s: %q", f, backend, ours)
				}
				if s := n.tables(t, f, other); strings.Contains(s, "DOT_SIDECAR") {
					t.Errorf("%s: auto wrote into %s as well", f, other)
				}
			}
			// cleanup with auto finds our rules wherever they are.
			if res := n.script(t, []string{"IPTABLES_MODE=auto"}, nil, "cleanup"); res.code != 0 {
				t.Fatalf("cleanup: %s", res.stderr)
			}
			for _, s := range n.state(t, backend) {
				if strings.Contains(s, "DOT_SIDECAR") {
					t.Errorf("auto cleanup left:\n%s", s)
				}
			}
		})

		t.Run(backend+"/no-ipv6", func(t *testing.T) {
			t.Parallel()
			n := newNetns(t)
			before := n.state(t, backend)
			res := n.script(t, append([]string{"DOT_SIDECAR_IF_INET6=/nonexistent/if_inet6"}, mode...), nil, "apply")
			if res.code != 0 || !strings.Contains(res.stderr, "IPv6: skipped: kernel has no IPv6") {
				t.Fatalf("exit %d; want IPv6 skipped and said so; stderr:\n%s", res.code, res.stderr)
			}
			after := n.state(t, backend)
			if ours, _ := split(after[0]); !slices.Equal(ours, want[0]) {
				t.Errorf("IPv4 rules %q, want %q", ours, want[0])
			}
			if after[1] != before[1] {
				t.Errorf("ip6tables touched although IPv6 was skipped:\n%s", after[1])
			}
		})

		// Without a command, or with a wrong one, the script changes nothing,
		// in either backend, whatever privileges it has: the command is
		// never guessed.
		t.Run(backend+"/no-command-changes-nothing", func(t *testing.T) {
			t.Parallel()
			n := newNetns(t)
			n.addForeign(t, backend)
			before := [2][2]string{n.state(t, backend), n.state(t, other)}
			for _, args := range [][]string{nil, {""}, {"frobnicate"}, {"APPLY"}, {"apply-now"}} {
				res := n.script(t, mode, nil, args...)
				if res.code != exitUsage || !strings.Contains(res.stderr, "usage: dns-redirect.sh") || res.stdout != "" {
					t.Errorf("%q: exit %d, stdout %q, stderr %q; want %d and the usage on stderr", args, res.code, res.stdout, res.stderr, exitUsage)
				}
				if got := [2][2]string{n.state(t, backend), n.state(t, other)}; got != before {
					t.Errorf("%q changed the tables:\n%v\nwas\n%v", args, got, before)
				}
			}
		})

		t.Run(backend+"/privileges", func(t *testing.T) {
			t.Parallel()
			n := newNetns(t)
			before := n.state(t, backend)
			cases := []privCase{
				{"non-root", asNobody, "missing CAP_NET_ADMIN"},
				{"root without NET_ADMIN", withoutNetAdmin, "missing CAP_NET_ADMIN"},
			}
			if backend == "legacy" {
				cases = append(cases, privCase{"root without NET_RAW", []string{"setpriv", "--bounding-set", "-net_raw"}, "missing CAP_NET_RAW"})
			}
			for _, tc := range cases {
				for _, cmd := range []string{"apply", "cleanup"} {
					res := n.script(t, mode, tc.wrap, cmd)
					if res.code != exitPriv || !strings.Contains(res.stderr, tc.msg) {
						t.Errorf("%s %s: exit %d, want %d and %q; stderr:\n%s", tc.name, cmd, res.code, exitPriv, tc.msg, res.stderr)
					}
				}
			}
			if got := n.state(t, backend); got != before {
				t.Errorf("an unprivileged run changed the tables:\n%s", got)
			}
		})
	}
}

// firstRule returns the first "-A chain" line of a save.
func firstRule(save, chain string) string {
	for _, l := range strings.Split(save, "\n") {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			return l
		}
	}
	return ""
}
