package image

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/podmantest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

// Addresses of the podman tests' namespaces: documentation ranges only
// (RFC 5737, RFC 3849).
const (
	podIP4     = "192.0.2.10"
	podIP6     = "2001:db8::10"
	upstreamV4 = "192.0.2.2"    // Unbound, DoT on 853
	upstreamV6 = "2001:db8::2"  // the same Unbound
	kubeDNS4   = "192.0.2.53"   // resolv.conf names these; nothing
	kubeDNS6   = "2001:db8::53" // listens on their port 53
	podIface   = "eth0"
	// caInContainer is where the sidecar finds the upstream's CA, as a
	// Secret or ConfigMap volume would put it.
	caInContainer = "/etc/dot-sidecar/upstream-ca.pem"
)

// podTopology is a pod's network namespace joined by a veth pair to an
// "outside" one holding the DoT upstream and the addresses of kube-dns.
type podTopology struct {
	pod, out *netnstest.Netns
	up       *upstream
}

func newPodTopology(t *testing.T) *podTopology {
	t.Helper()
	tp := &podTopology{pod: netnstest.New(t), out: netnstest.New(t)}
	netnstest.Veth(t,
		netnstest.End{NS: tp.pod, Name: podIface, Addrs: []string{podIP4 + "/24", podIP6 + "/64"}},
		netnstest.End{NS: tp.out, Name: podIface, Addrs: []string{upstreamV4 + "/24", kubeDNS4 + "/24", upstreamV6 + "/64", kubeDNS6 + "/64"}})
	tp.up = startUpstream(t, tp.out, upstreamV4, upstreamV6)
	return tp
}

// upstream is Unbound serving DoT on port 853 of its addresses in a
// namespace, with its CA in a file the sidecar's UID can read.
type upstream struct {
	unbound *unboundtest.Server
	addrs   []string
	caFile  string
}

func startUpstream(t *testing.T, ns *netnstest.Netns, addrs ...string) *upstream {
	t.Helper()
	var extra []string
	for _, a := range addrs[1:] {
		extra = append(extra, "interface: "+a+"@853")
	}
	u := &upstream{addrs: addrs}
	u.unbound = unboundtest.Start(t, unboundtest.Options{
		Address: addrs[0], Port: 853, ExtraConfig: extra, Prefix: []string{"ip", "netns", "exec", ns.Name}, Names: 8,
	})
	u.caFile = filepath.Join(sharedDir(t), "upstream-ca.pem")
	if err := os.WriteFile(u.caFile, u.unbound.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return u
}

// sharedDir is a temporary directory every UID may enter (t.TempDir's
// parent is not), for files the containers' users read.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// settings are the rendered settings with this upstream in place of the
// public ones: what an operator changes in settings.env.
func (u *upstream) settings() map[string]string {
	var ups []string
	for _, a := range u.addrs {
		if strings.Contains(a, ":") {
			a = "[" + a + "]"
		}
		ups = append(ups, "tls://"+a+"#"+u.unbound.ServerName)
	}
	return map[string]string{"UPSTREAMS": strings.Join(ups, ","), "TLS_CA_FILE": caInContainer}
}

// caVolume mounts the CA where settings say it is.
func (u *upstream) caVolume() string { return u.caFile + ":" + caInContainer + ":ro" }

// dotQueries is how many queries Unbound has received over TLS.
func (u *upstream) dotQueries(t *testing.T) float64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := u.unbound.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st["num.query.tls"]
}

// resolverPath is one way an application's query leaves: a nameserver of
// resolv.conf, over UDP or TCP.
type resolverPath struct {
	nameserver string
	tcp        bool
}

func (p resolverPath) String() string {
	proto := "udp"
	if p.tcp {
		proto = "tcp"
	}
	return p.nameserver + "/" + proto
}

var podPaths = []resolverPath{{kubeDNS4, false}, {kubeDNS4, true}, {kubeDNS6, false}, {kubeDNS6, true}}

// lookup runs the application container once: glibc's getent looks up
// name (A and AAAA) through the resolv.conf the runtime writes, naming
// only path's nameserver, over TCP for a TCP path (use-vc).
func lookup(ctx context.Context, t *testing.T, e *podmantest.Engine, app podmantest.Spec, path resolverPath, name string) netnstest.Result {
	t.Helper()
	app.Entrypoint, app.Args = []string{"getent"}, []string{"ahosts", name}
	app.DNS = []string{path.nameserver}
	app.DNSSearch = []string{"default.svc.cluster.local", "svc.cluster.local", "cluster.local"}
	app.DNSOptions = []string{"ndots:5", "timeout:2", "attempts:1"}
	if path.tcp {
		app.DNSOptions = append(app.DNSOptions, "use-vc")
	}
	return e.Run(ctx, t, app)
}

// procStatus reads fields of /proc/1/status in a running container: its
// main process's identity and privileges.
func procStatus(t *testing.T, c *podmantest.Container) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := c.Exec(ctx, nil, "cat", "/proc/1/status")
	if r.Err != nil {
		t.Fatalf("%v", r)
	}
	fields := map[string]string{}
	for _, l := range strings.Split(r.Stdout, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return fields
}

// natRules returns our rules in the namespace's nat table, both families.
func natRules(t *testing.T, ns *netnstest.Netns, chain string) string {
	t.Helper()
	var b strings.Builder
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		for _, l := range strings.Split(ns.NATTable(t, save), "\n") {
			if strings.Contains(l, chain) {
				fmt.Fprintf(&b, "%s: %s\n", save, l)
			}
		}
	}
	return b.String()
}

// TestPodmanPod runs the pod of manifests/base from the image built from
// the repository's Dockerfile: its containers share one network namespace,
// as a pod's do, with the users, capabilities, read-only root filesystems,
// volumes, settings and limits of the rendered manifests. The iptables
// init container applies the rules, the sidecar relays over DoT to Unbound
// outside the pod, the check container passes, and an application
// container's lookups are answered over UDP and TCP to an IPv4 and an IPv6
// nameserver; with the sidecar stopped DNS fails closed; no port-53 packet
// ever leaves the pod; cleanup removes the rules.
func TestPodmanPod(t *testing.T) {
	t.Parallel()
	e := podmantest.New(t)
	testkit.RequireTools(t, "iptables-save", "ip6tables-save", "tcpdump")
	img := e.ProjectImage(t)
	base := e.BaseImages(t)
	manifest := renderPod(t, "base", "Deployment/dns-client")
	tp := newPodTopology(t)
	capture := netnstest.StartCapture(t, tp.pod, podIface, t.TempDir())

	network := podmantest.Netns(tp.pod)
	project := runOptions{image: img.Ref, network: network, settings: tp.up.settings()}
	initSpec := manifest.runSpec(t, manifest.container(t, "dot-sidecar-iptables"), project)
	sidecarOpts := project
	sidecarOpts.volumes = []string{tp.up.caVolume()}
	sidecarSpec := manifest.runSpec(t, manifest.container(t, "dot-sidecar"), sidecarOpts)
	checkSpec := manifest.runSpec(t, manifest.container(t, "dot-sidecar-check"), project)
	checkSpec.DNS = []string{kubeDNS4, kubeDNS6}
	appSpec := manifest.runSpec(t, manifest.container(t, "app"), runOptions{image: base.Debian, network: network})

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	t.Run("init applies the rules as root with NET_ADMIN and NET_RAW only", func(t *testing.T) {
		probe := initSpec
		probe.Name = "init-privileges"
		probe.Entrypoint, probe.Args = []string{"grep", "-E", "^(Uid|CapEff|CapBnd|NoNewPrivs):"}, []string{"/proc/self/status"}
		r := e.Run(ctx, t, probe)
		for _, want := range []string{"Uid:\t0\t0\t0\t0", "CapEff:\t0000000000003000", "CapBnd:\t0000000000003000", "NoNewPrivs:\t1"} {
			if r.Err != nil || !strings.Contains(r.Stdout, want) {
				t.Fatalf("the init container's settings give no %q:\n%v", want, r)
			}
		}
		r = e.Run(ctx, t, initSpec)
		if r.Err != nil || !strings.Contains(r.Stderr, "dns-redirect: applied:") {
			t.Fatalf("init: %v", r)
		}
		rules := natRules(t, tp.pod, "DOT_SIDECAR_OUTPUT")
		for _, want := range []string{"iptables-save: -A OUTPUT", "ip6tables-save: -A OUTPUT", "--uid-owner 10053"} {
			if !strings.Contains(rules, want) {
				t.Errorf("after init the pod's nat rules lack %q:\n%s", want, rules)
			}
		}
	})
	if t.Failed() {
		return
	}

	sidecar := e.Start(t, sidecarSpec)
	t.Run("sidecar runs as 10053 with a read-only root and no capabilities", func(t *testing.T) {
		// The legacy manifests' postStart hook: returns once /readyz is 200.
		if r := sidecar.Exec(ctx, nil, "/opt/dot-sidecar/entrypoint.sh", "wait"); r.Err != nil {
			t.Fatalf("%v", r)
		}
		st := procStatus(t, sidecar)
		for k, want := range map[string]string{
			"Name": "dot-sidecar", "Uid": "10053 10053 10053 10053", "Gid": "10053 10053 10053 10053",
			"CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1",
		} {
			if st[k] != want {
				t.Errorf("the sidecar's PID 1 has %s %q, want %q", k, st[k], want)
			}
		}
		if ro := sidecar.Inspect(t, "{{.HostConfig.ReadonlyRootfs}}"); ro != "true" {
			t.Errorf("the sidecar's root filesystem is not read-only (%s)", ro)
		}
	})

	t.Run("check passes as 10054", func(t *testing.T) {
		r := e.Run(ctx, t, checkSpec)
		if r.Err != nil || !strings.Contains(r.Stdout, "OK: all 4 paths intercepted") {
			t.Fatalf("check: %v", r)
		}
	})

	t.Run("application lookups answered through DoT", func(t *testing.T) {
		before := tp.up.dotQueries(t)
		for i, path := range podPaths {
			// A name of its own per path: a cached answer proves nothing.
			rec := tp.up.unbound.Names[i]
			name := strings.TrimSuffix(rec.Name, ".")
			r := lookup(ctx, t, e, appSpec, path, name)
			if r.Err != nil || !strings.Contains(r.Stdout, rec.A.String()+" ") || !strings.Contains(r.Stdout, rec.AAAA.String()+" ") {
				t.Errorf("%s: getent ahosts %s, want %s and %s:\n%v", path, name, rec.A, rec.AAAA, r)
			}
		}
		if got := tp.up.dotQueries(t) - before; got < float64(len(podPaths)) {
			t.Errorf("Unbound received %v queries over TLS for %d lookups", got, len(podPaths))
		}
	})

	t.Run("fails closed with the sidecar stopped", func(t *testing.T) {
		sidecar.Stop(t, 15*time.Second)
		for i, path := range podPaths {
			name := strings.TrimSuffix(tp.up.unbound.Names[i].Name, ".")
			if r := lookup(ctx, t, e, appSpec, path, name); r.Code() != 2 || strings.TrimSpace(r.Stdout) != "" {
				t.Errorf("%s: with the sidecar stopped, getent answered (want exit 2, no address):\n%v", path, r)
			}
		}
		// The check tells a reply from elsewhere (a leak) from none at all.
		r := e.Run(ctx, t, checkSpec)
		if r.Err == nil || strings.Count(r.Stdout, "no answer") != 4 || strings.Contains(r.Stdout, "answered by something else") {
			t.Errorf("check with the sidecar stopped: want every path without an answer:\n%v", r)
		}
	})

	t.Run("no port-53 packet left the pod", func(t *testing.T) {
		capture.Stop(t)
		if leaked := capture.Packets(t, "port 53"); len(leaked) > 0 {
			t.Errorf("%d port-53 packets on the pod's %s:\n%s", len(leaked), podIface, strings.Join(leaked, "\n"))
		}
		if dot := capture.Packets(t, "tcp port 853"); len(dot) == 0 {
			t.Error("no DoT packet in the capture either: it saw nothing")
		}
	})

	t.Run("cleanup removes the rules", func(t *testing.T) {
		cleanup := initSpec
		cleanup.Name, cleanup.Args = "cleanup", []string{"cleanup"}
		if r := e.Run(ctx, t, cleanup); r.Err != nil {
			t.Fatalf("cleanup: %v", r)
		}
		if rules := natRules(t, tp.pod, "DOT_SIDECAR"); rules != "" {
			t.Errorf("rules left after cleanup:\n%s", rules)
		}
	})
}
