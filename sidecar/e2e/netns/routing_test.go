package netns

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/check"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/corednstest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

// The routing scenario's addresses: a pod and its node on a documentation
// range, and kube-dns at a Service IP of kubeadm's default Service range,
// reached through the node as in a cluster.
const (
	routePodIP   = "192.0.2.10"
	nodeIP       = "192.0.2.1"  // the public DoT upstream listens here
	dnsServiceIP = "10.96.0.10" // kube-dns: CoreDNS
	nodeDomain   = "c.example.internal"
	podNamespace = "default"
)

// kubeletResolvConf is the file the kubelet writes into a pod with
// dnsPolicy ClusterFirst: the pod's namespace, the cluster domain and the
// node's own search domain, kube-dns's Service IP, ndots:5.
func kubeletResolvConf() string {
	return "search " + podNamespace + ".svc.cluster.local svc.cluster.local cluster.local " + nodeDomain + "\n" +
		"nameserver " + dnsServiceIP + "\n" +
		"options ndots:5\n"
}

// searchList is kubeletResolvConf's, in order.
var searchList = []string{podNamespace + ".svc.cluster.local", "svc.cluster.local", "cluster.local", nodeDomain}

// Public names the DoT upstream answers, one per lookup so that no answer
// a lookup gets can come from a cache an earlier lookup filled.
var publicNames = map[string][2]string{ // name: A, AAAA
	"api.example.com": {"198.51.100.80", "2001:db8::80"},
	"www.example.com": {"198.51.100.81", "2001:db8::81"},
	"off.example.com": {"198.51.100.82", "2001:db8::82"},
}

// routing is the scenario: a pod whose resolv.conf the kubelet wrote, the
// iptables init step applied, the sidecar with no routing settings, kube-dns
// (CoreDNS) at its Service IP and a public DoT upstream (Unbound) on the node.
type routing struct {
	backend   string // IPTABLES_MODE of the init step; nft when empty
	bin, dir  string
	pod, node *netnstest.Netns
	up        *unboundtest.Server
	cluster   *corednstest.Server
	sidecar   *testkit.Process
}

// TestClusterRouting: with no settings, a pod's Service names, its
// search-list expansions and its private reverse names go to the cluster's
// resolver, public names to the DoT upstream only, and nothing else leaves
// the pod in plaintext.
func TestClusterRouting(t *testing.T) {
	s := newRouting(t)
	capture := netnstest.StartCapture(t, s.pod, podIface, s.dir)
	s.serve(t)
	s.sidecar = s.startSidecar(t, "sidecar")

	t.Run("glibc lookups", s.testLookups)
	t.Run("check passes", func(t *testing.T) {
		r := run(s.pod, checkUID, nil, s.bin, "check")
		t.Logf("dot-sidecar check:\n%s%s", r.Stdout, r.Stderr)
		// Through the sidecar, the cluster route's answer to the name every
		// cluster has.
		want := "route cluster: " + s.cluster.Services[0].FQDN + " resolved (" + s.cluster.Services[0].IPv4.String() + ")"
		if r.Err != nil || !strings.Contains(r.Stdout+r.Stderr, want) {
			t.Errorf("check in the pod: want exit 0 and %q; got %v", want, r)
		}
	})
	capture.Stop(t)
	t.Run("capture", func(t *testing.T) { s.testCapture(t, capture) })
	t.Run("public lookup count", s.testCount)
}

// newRouting builds the scenario's pod and node, linked, with the pod's
// resolv.conf, nsswitch.conf and hosts as the kubelet and the image make
// them; nothing runs in them yet (serve).
func newRouting(t testing.TB) *routing {
	t.Helper()
	testkit.RequireRoot(t)
	testkit.RequireTools(t, "ip", "iptables-nft", "ip6tables-nft", "unbound", "unbound-control", "kdig", "tcpdump",
		"getent", "setpriv", "sysctl")
	s := &routing{bin: bintest.Binary(t), dir: sharedDir(t, true), pod: netnstest.New(t), node: netnstest.New(t)}
	netnstest.Veth(t, netnstest.End{NS: s.pod, Name: podIface, Addrs: []string{routePodIP + "/24"}},
		netnstest.End{NS: s.node, Name: podIface, Addrs: []string{nodeIP + "/24"}})
	s.pod.Must(t, "ip", "route", "add", "default", "via", nodeIP)
	s.node.Must(t, "ip", "addr", "add", dnsServiceIP+"/32", "dev", "lo")
	s.pod.WriteEtc(t, "resolv.conf", kubeletResolvConf())
	s.pod.WriteEtc(t, "nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
	s.pod.WriteEtc(t, "hosts", "127.0.0.1 localhost\n::1 localhost ip6-localhost\n")
	return s
}

// serve starts the resolvers on the node (extra: more configuration lines
// for the public upstream) and applies the iptables init step in the pod.
func (s *routing) serve(t testing.TB, extra ...string) {
	t.Helper()
	s.startServers(t, extra...)
	backend := s.backend
	if backend == "" {
		backend = "nft"
	}
	r := run(s.pod, rootUID, []string{"IPTABLES_MODE=" + backend, "BIND_PORT=" + bindPort, "SIDECAR_UID=" + strconv.Itoa(sidecarUID)},
		"sh", filepath.Join(testkit.RepoRoot(t), "entrypoint.sh"), "init")
	if r.Err != nil {
		t.Fatalf("entrypoint.sh init: %v", r)
	}
}

func (s *routing) startServers(t testing.TB, extra ...string) {
	t.Helper()
	local := extra
	for name, addrs := range publicNames {
		local = append(local, fmt.Sprintf("local-data: %q", name+". 300 IN A "+addrs[0]),
			fmt.Sprintf("local-data: %q", name+". 300 IN AAAA "+addrs[1]))
	}
	s.up = unboundtest.Start(t, unboundtest.Options{
		Address: nodeIP, Port: 853, Prefix: s.node.Prefix(), DialContext: s.node.DialContext,
		Zone: "example.com.", Names: 1, LogQueries: true, ExtraConfig: local,
	})
	copyFile(t, s.up.CAFile, filepath.Join(s.dir, "ca.pem"), 0o644)
	s.cluster = corednstest.Start(t, corednstest.Options{
		Address: dnsServiceIP, Port: 53, TLSPort: 853, Prefix: s.node.Prefix(), DialContext: s.node.DialContext,
		Zones: []corednstest.Zone{{Origin: nodeDomain, Records: []string{"node1." + nodeDomain + ". 5 IN A 10.128.0.2"}}},
	})
}

// startSidecar runs the sidecar in the pod as its UID with only its
// upstream and trust set, plus env, and waits until it answers. Its cache is
// off: the tests count the queries each lookup sends, and lookups repeat
// names (every search-list expansion of a short name, for one).
func (s *routing) startSidecar(t testing.TB, name string, env ...string) *testkit.Process {
	t.Helper()
	env = append([]string{
		"UPSTREAMS=tls://" + nodeIP + ":853#" + s.up.ServerName,
		"TLS_CA_FILE=" + filepath.Join(s.dir, "ca.pem"),
		"BIND_PORT=" + bindPort,
		"LOG_LEVEL=debug",
		"CACHE_SIZE=0",
	}, env...)
	p := start(t, s.pod, name, sidecarUID, env, s.bin)
	waitForCanary(t, s.pod, p, "127.0.0.1")
	return p
}

// lookup is one glibc lookup the application makes, what it must print,
// and exactly which queries it sends to each resolver ("NAME TYPE").
type lookup struct {
	db, key string
	want    string   // the first fields of the output's first line
	dot     []string // at the public DoT upstream
	cluster []string // at kube-dns
}

// queries lists "NAME. TYPE" for name under each domain, each type.
func queries(name string, domains []string, types ...string) []string {
	var qs []string
	for _, d := range domains {
		for _, qt := range types {
			qs = append(qs, dnsName(name, d)+" "+qt)
		}
	}
	return qs
}

func dnsName(name, domain string) string {
	if domain == "" {
		return name + "."
	}
	return name + "." + domain + "."
}

// lookups, with glibc's resolver (ndots:5: a name with fewer dots goes
// through the search list first, then as it is):
//   - getent ahosts asks A and AAAA together and stops at the first domain
//     that gives either an answer;
//   - getent hosts asks AAAA through the whole search list and then the
//     name as it is, and only then A: a NODATA (a Service without an IPv6
//     address) does not stop the search, so the short name's last AAAA try
//     is the name as it is, `kubernetes.default.`, which is no cluster name
//     and goes to the public upstream (and would reach the Internet through
//     kube-dns just the same).
func (s *routing) lookups() []lookup {
	kube, web := s.cluster.Services[0], s.cluster.Services[2]
	fqdn := strings.TrimSuffix(kube.FQDN, ".")
	first2 := searchList[:2]
	return []lookup{
		{"ahosts", "kubernetes.default", kube.IPv4.String(), nil,
			queries("kubernetes.default", first2, "A", "AAAA")},
		{"hosts", "kubernetes.default", kube.IPv4.String(), []string{"kubernetes.default. AAAA"},
			append(queries("kubernetes.default", searchList, "AAAA"), queries("kubernetes.default", first2, "A")...)},
		{"ahosts", fqdn, kube.IPv4.String(), nil,
			append(queries(fqdn, searchList, "A", "AAAA"), queries(fqdn, []string{""}, "A", "AAAA")...)},
		{"hosts", fqdn, kube.IPv4.String(), nil,
			append(append(queries(fqdn, searchList, "AAAA"), queries(fqdn, []string{""}, "AAAA")...),
				append(queries(fqdn, searchList, "A"), queries(fqdn, []string{""}, "A")...)...)},
		{"ahosts", "web.shop", web.IPv4.String(), nil, queries("web.shop", first2, "A", "AAAA")},
		{"ahosts", "api.example.com", publicNames["api.example.com"][0], queries("api.example.com", []string{""}, "A", "AAAA"),
			queries("api.example.com", searchList, "A", "AAAA")},
		{"hosts", "www.example.com", publicNames["www.example.com"][1], queries("www.example.com", []string{""}, "AAAA"),
			queries("www.example.com", searchList, "AAAA")},
		{"hosts", kube.IPv4.String(), kube.IPv4.String() + " " + fqdn, nil, []string{corednstest.ReverseName(kube.IPv4) + " PTR"}},
		{"ahosts", "node1", "10.128.0.2", nil, queries("node1", searchList, "A", "AAAA")},
	}
}

// testLookups runs each lookup as the application and compares what each
// resolver received with what glibc sends.
func (s *routing) testLookups(t *testing.T) {
	for _, l := range s.lookups() {
		t.Run(l.db+" "+l.key, func(t *testing.T) {
			dotBefore := s.dotQueries(t)
			clusterBefore := s.cluster.Sync(t)
			r := run(s.pod, appUID, nil, "getent", l.db, l.key)
			first, _, _ := strings.Cut(r.Stdout, "\n")
			if want := strings.Fields(l.want); r.Err != nil || len(strings.Fields(first)) < len(want) || !slices.Equal(strings.Fields(first)[:len(want)], want) {
				t.Errorf("getent %s %s: want %q first; got %v", l.db, l.key, l.want, r)
			}
			dot := s.dotQueries(t)[len(dotBefore):]
			if !sameQueries(dot, l.dot) {
				t.Errorf("at the public DoT upstream: %q\nwant exactly %q", dot, l.dot)
			}
			cluster := clusterNames(s.cluster.Sync(t)[len(clusterBefore):])
			if !sameQueries(cluster, l.cluster) {
				t.Errorf("at kube-dns: %q\nwant exactly %q", cluster, l.cluster)
			}
		})
	}
}

// dotQueries lists the queries the DoT upstream received, "NAME TYPE",
// leaving out the sidecar's health probes of the root.
func (s *routing) dotQueries(t *testing.T) []string {
	t.Helper()
	qs, err := s.up.Queries()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, q := range qs {
		if q.Name != "." {
			out = append(out, strings.ToLower(q.Name)+" "+q.Type)
		}
	}
	return out
}

// clusterNames lists kube-dns's queries as "NAME TYPE", leaving out the
// sidecar's health probes of the cluster domain's SOA.
func clusterNames(qs []corednstest.Query) []string {
	var out []string
	for _, q := range qs {
		if q.Type == "SOA" && strings.EqualFold(q.Name, "cluster.local.") {
			continue
		}
		out = append(out, strings.ToLower(q.Name)+" "+q.Type)
	}
	return out
}

// sameQueries compares two lists of queries as multisets: glibc sends A
// and AAAA at once, and kube-dns logs them in either order.
func sameQueries(got, want []string) bool {
	g, w := slices.Clone(got), slices.Clone(want)
	slices.Sort(g)
	slices.Sort(w)
	return slices.Equal(g, w)
}

// testCapture reads every packet that crossed the pod's interface: port 53
// only to and from kube-dns, carrying only names of the cluster domain, of
// the search list and of private reverse zones; the public names, whose
// queries did reach the DoT upstream, in no packet at all.
func (s *routing) testCapture(t *testing.T, c *netnstest.Capture) {
	if got := c.Packets(t, "port 53 and not host "+dnsServiceIP); len(got) != 0 {
		t.Errorf("%d port-53 packets to or from another address than kube-dns's:\n%s", len(got), strings.Join(got, "\n"))
	}
	kubeDNS := netip.MustParseAddr(dnsServiceIP)
	var decoded int
	for _, pkt := range c.Raw(t, "port 53") {
		q, err := decodeQuestion(pkt)
		if errors.Is(err, errNoDNS) {
			continue
		}
		if err != nil {
			t.Errorf("a port-53 packet: %v", err)
			continue
		}
		decoded++
		if (q.response && q.src != kubeDNS) || (!q.response && q.dst != kubeDNS) {
			t.Errorf("%v: not kube-dns's", q)
		}
		if !privateName(q.name) {
			t.Errorf("%v: a name that is neither the cluster's, the search list's nor a private reverse name", q)
		}
	}
	if decoded == 0 {
		t.Error("no DNS message decoded from the capture: it cannot show what leaked")
	}
	for _, pkt := range c.Raw(t, "") {
		for name := range publicNames {
			if name != "off.example.com" && carries(pkt, name) {
				t.Errorf("a packet carries %s in the clear: % x", name, pkt)
			}
		}
	}
	if got := c.Packets(t, "host "+nodeIP+" and "+filterTLSHandshake); len(got) == 0 {
		t.Error("no TLS handshake with the DoT upstream captured")
	}
	if got := c.Packets(t, "not (tcp port 853 and host "+nodeIP+") and not (port 53 and host "+dnsServiceIP+
		") and not arp and not (icmp6 and ip6[40] >= 133 and ip6[40] <= 137) and not (ip6 and ip6[6] = 0)"); len(got) != 0 {
		t.Errorf("%d packets that are neither DoT to the upstream, DNS with kube-dns nor link housekeeping:\n%s", len(got), strings.Join(got, "\n"))
	}
}

// privateName: under a search domain (the cluster domain among them) or in
// a reverse zone of a private range.
func privateName(name string) bool {
	for _, d := range append(slices.Clone(searchList), "10.in-addr.arpa") {
		if name == d+"." || strings.HasSuffix(name, "."+d+".") {
			return true
		}
	}
	return false
}

// testCount measures what routing is for: the queries one glibc lookup of
// a public name sends to the public upstream. With the default
// (CLUSTER_DNS=auto) only the name itself goes there, its search-list
// expansions to kube-dns. With CLUSTER_DNS=off the expansions under the
// cluster domain are answered NXDOMAIN by the sidecar itself (cluster.local
// is under local., a special-use name) and the node domain's go to the
// public upstream. Before routing existed, all ten went there
// (docs/kubernetes.md).
func (s *routing) testCount(t *testing.T) {
	count := func(t *testing.T, name string) ([]string, []string) {
		dotBefore, clusterBefore := s.dotQueries(t), s.cluster.Sync(t)
		if r := run(s.pod, appUID, nil, "getent", "ahosts", name); r.Err != nil {
			t.Fatalf("getent ahosts %s: %v", name, r)
		}
		return s.dotQueries(t)[len(dotBefore):], clusterNames(s.cluster.Sync(t)[len(clusterBefore):])
	}
	dot, cluster := count(t, "api.example.com")
	t.Logf("getent ahosts api.example.com with ndots:5 and %d search domains, CLUSTER_DNS=auto: %d queries at the public upstream %q, %d at kube-dns",
		len(searchList), len(dot), dot, len(cluster))
	if want := queries("api.example.com", []string{""}, "A", "AAAA"); !sameQueries(dot, want) || len(cluster) != 2*len(searchList) {
		t.Errorf("CLUSTER_DNS=auto: %q at the public upstream, %q at kube-dns; want %q and the %d search-list tries",
			dot, cluster, want, 2*len(searchList))
	}

	if err := s.sidecar.Stop(testkit.StopGrace); err != nil {
		t.Fatal(err)
	}
	s.startSidecar(t, "sidecar CLUSTER_DNS=off", "CLUSTER_DNS=off")
	const name = "off.example.com"
	dot, cluster = count(t, name)
	t.Logf("getent ahosts %s, CLUSTER_DNS=off: %d queries at the public upstream %q, %d at kube-dns", name, len(dot), dot, len(cluster))
	want := append(queries(name, []string{nodeDomain}, "A", "AAAA"), queries(name, []string{""}, "A", "AAAA")...)
	if !sameQueries(dot, want) || len(cluster) != 0 {
		t.Errorf("CLUSTER_DNS=off: %q at the public upstream, %q at kube-dns; want %q and none", dot, cluster, want)
	}
}

// waitForCanary waits until the sidecar p, started in ns, answers the
// check's canary on addr.
func waitForCanary(t testing.TB, ns *netnstest.Netns, p *testkit.Process, addr string) {
	t.Helper()
	testkit.WaitFor(t, "the sidecar to answer the canary on "+addr, 15*time.Second, func() error {
		if p.Exited() {
			return testkit.Permanent(fmt.Errorf("sidecar exited: %v\n%s", p.Err(), testkit.Tail(p.Output(), 30)))
		}
		r := run(ns, rootUID, nil, "kdig", "@"+addr, "-p", bindPort, "+timeout=1", "+retry=0", "+short", check.CanaryName, "TXT")
		if r.Err != nil || !strings.Contains(r.Stdout, strings.TrimSpace(check.CanaryPrefix)) {
			return fmt.Errorf("%v", r)
		}
		return nil
	})
}
