package iptables

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
)

// The sidecar's own queries to the cluster's resolver leave the pod on port
// 53, from ports the kernel picks, and an application's queries to the same
// resolver are redirected to the sidecar. NAT is decided on a flow's first
// packet only: without the conntrack zones of the raw table, a flow of one
// whose 5-tuple is that of a recent flow of the other reuses its entry, and
// with it the other's NAT decision. These tests make the two collide on
// purpose, by binding the second client to the source port the first one
// used, and see who answers.

const (
	zonePodIP4   = "192.0.2.10"
	zonePodIP6   = "2001:db8::10"
	zoneKubeDNS4 = "192.0.2.53"
	zoneKubeDNS6 = "2001:db8::53"
	zoneAppUID   = 10100
	zoneOtherUID = 20053 // a UID of the sidecar's group (SIDECAR_GID)
	zoneOtherGID = 10054 // a group that is not the sidecar's
)

// The identities whose port-53 traffic the rules exempt and zone: the
// sidecar's UID (with another group), and another UID with the sidecar's
// group (SIDECAR_GID). Neither has a capability.
var zoneSidecars = []struct {
	name string
	wrap []string
}{
	{"uid", setprivAs(sidecarUID, fmt.Sprint(zoneOtherGID))},
	{"gid", setprivAs(fmt.Sprint(zoneOtherUID), sidecarUID)},
}

func setprivAs(uid, gid string) []string {
	return []string{"setpriv", "--reuid=" + uid, "--regid=" + gid, "--clear-groups",
		"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"}
}

// zoneLab is a pod and the cluster's resolver ("kube-dns", a DNS helper as
// root), joined by a veth pair, with a stand-in for the sidecar in the pod
// (a DNS helper as the sidecar's UID on BIND_PORT, both families). Each
// helper's answer names the UID that answered and the client's address as
// it saw it.
type zoneLab struct {
	pod, cluster netns
	bin          string
}

func newZoneLab(t *testing.T) *zoneLab {
	t.Helper()
	lab := &zoneLab{pod: newNetns(t), cluster: newNetns(t), bin: helperBinary(t)}
	netnstest.Veth(t,
		netnstest.End{NS: lab.pod.Netns, Name: "eth0", Addrs: []string{zonePodIP4 + "/24", zonePodIP6 + "/64"}},
		netnstest.End{NS: lab.cluster.Netns, Name: "eth0", Addrs: []string{zoneKubeDNS4 + "/24", zoneKubeDNS6 + "/64"}})
	for _, a := range []string{zoneKubeDNS4, zoneKubeDNS6} {
		startDNSServer(t, lab.cluster, lab.bin, nil, netip.AddrPortFrom(netip.MustParseAddr(a), 53).String(), "")
	}
	for _, a := range []string{"127.0.0.1:5053", "[::1]:5053"} {
		startDNSServer(t, lab.pod, lab.bin, asSidecar, a, "")
	}
	return lab
}

// ask sends one query to kube-dns of family fam over network, as wrap, from
// source port port (unless 0), and returns who answered: "kube-dns" or
// "sidecar". It fails t unless the answerer saw the query come from port.
func (lab *zoneLab) ask(t *testing.T, wrap []string, fam int, network string, port int) (who string) {
	t.Helper()
	server, pod := zoneKubeDNS4, zonePodIP4
	if fam == 6 {
		server, pod = zoneKubeDNS6, zonePodIP6
	}
	addr := netip.AddrPortFrom(netip.MustParseAddr(server), 53).String()
	text, ok := queryFrom(t, lab.pod, lab.bin, wrap, network, addr, port)
	if !ok {
		t.Fatalf("%s query from port %d to %s: %s", network, port, addr, text)
	}
	f := strings.Fields(text) // uid=N proto=P client=ADDR
	if len(f) != 3 {
		t.Fatalf("answer %q", text)
	}
	switch f[0] {
	case "uid=0":
		who = "kube-dns"
	case "uid=" + sidecarUID:
		who = "sidecar"
	default:
		t.Fatalf("answer from an unknown helper: %q", text)
	}
	client := strings.TrimPrefix(f[2], "client=")
	if port != 0 {
		if want := netip.AddrPortFrom(netip.MustParseAddr(pod), uint16(port)).String(); client != want {
			t.Fatalf("%s saw the query from %s, want %s: the flows cannot collide", who, client, want)
		}
	}
	return who
}

// twoEntries checks, with conntrack(8), the entries of the UDP flows from
// source port port in the pod, which the sidecar and the application both
// used: the sidecar's, its original direction in zone 53, answered by
// kube-dns (so its reply, arriving in the default zone, found it), and the
// application's, in the default zone, answered by the sidecar's port.
func (lab *zoneLab) twoEntries(t *testing.T, fam, port int) {
	t.Helper()
	kubeDNS, loopback := zoneKubeDNS4, "127.0.0.1"
	if fam == 6 {
		kubeDNS, loopback = zoneKubeDNS6, "::1"
	}
	out := lab.pod.Must(t, "conntrack", "-L", "-f", map[int]string{4: "ipv4", 6: "ipv6"}[fam], "-p", "udp",
		"--orig-port-src", strconv.Itoa(port))
	var sidecar, app int
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		answered := !strings.Contains(l, "[UNREPLIED]")
		switch {
		case strings.Contains(l, " zone-orig=53 ") && strings.Contains(l, " src="+kubeDNS+" ") && answered:
			sidecar++
		case !strings.Contains(l, "zone") && strings.Contains(l, " src="+loopback+" ") && strings.Contains(l, " sport=5053 ") && answered:
			app++
		default:
			t.Errorf("an entry of port %d that is neither the sidecar's nor the application's: %s", port, l)
		}
	}
	if sidecar != 1 || app != 1 {
		t.Errorf("conntrack entries of port %d: want one answered by kube-dns in zone 53, one redirected to the sidecar in the default zone:\n%s", port, out)
	}
}

// TestConntrackZones: whichever of the sidecar and an application used a
// source port first, the other's query from the same port to the same
// resolver goes where its own rules send it: the application's to the
// sidecar, never to kube-dns in plaintext; the sidecar's to kube-dns, never
// back to itself. For each backend, family and redirect mode, and for the
// sidecar exempted by UID and by GID.
func TestConntrackZones(t *testing.T) {
	t.Parallel()
	requireNetnsTools(t)
	testkit.RequireTools(t, "conntrack")
	for _, backend := range []string{"nft", "legacy"} {
		for _, mode := range []string{"all", "resolvconf"} {
			t.Run(backend+"/"+mode, func(t *testing.T) {
				t.Parallel()
				lab := newZoneLab(t)
				env := []string{"IPTABLES_MODE=" + backend, "REDIRECT_MODE=" + mode, "SIDECAR_GID=" + sidecarUID}
				if mode == "resolvconf" {
					rc := filepath.Join(t.TempDir(), "resolv.conf")
					if err := os.WriteFile(rc, []byte("nameserver "+zoneKubeDNS4+"\nnameserver "+zoneKubeDNS6+"\n"), 0o644); err != nil {
						t.Fatal(err)
					}
					env = append(env, "RESOLV_CONF="+rc)
				}
				if res := lab.pod.script(t, env, nil, "apply"); res.code != 0 {
					t.Fatalf("apply: exit %d: %s", res.code, res.stderr)
				}
				app := netnstest.AsUser(zoneAppUID)
				port := 40000 // one source port per collision, so that no two share an entry
				for _, fam := range []int{4, 6} {
					for _, sc := range zoneSidecars {
						t.Run(fmt.Sprintf("IPv%d/%s", fam, sc.name), func(t *testing.T) {
							port++
							// The application's query leaves from the port of the
							// sidecar's query a moment before.
							if who := lab.ask(t, sc.wrap, fam, "udp", port); who != "kube-dns" {
								t.Fatalf("the sidecar's query to kube-dns was answered by the %s", who)
							}
							if who := lab.ask(t, app, fam, "udp", port); who != "sidecar" {
								t.Errorf("leak: the application's query from the port of the sidecar's flow reached %s, not the sidecar", who)
							}
							lab.twoEntries(t, fam, port)
							// The sidecar's query leaves from the port of the
							// application's query a moment before.
							port++
							if who := lab.ask(t, app, fam, "udp", port); who != "sidecar" {
								t.Fatalf("the application's query was answered by %s, not the sidecar", who)
							}
							if who := lab.ask(t, sc.wrap, fam, "udp", port); who != "kube-dns" {
								t.Errorf("loop: the sidecar's query from the port of the application's flow reached the %s, not kube-dns", who)
							}
							lab.twoEntries(t, fam, port)
							// TCP takes the same paths with the zones in place.
							if who := lab.ask(t, sc.wrap, fam, "tcp", 0); who != "kube-dns" {
								t.Errorf("the sidecar's TCP query reached the %s, not kube-dns", who)
							}
							if who := lab.ask(t, app, fam, "tcp", 0); who != "sidecar" {
								t.Errorf("the application's TCP query reached %s, not the sidecar", who)
							}
						})
					}
				}
			})
		}
	}
}
