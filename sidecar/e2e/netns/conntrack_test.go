package netns

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/check"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
)

// TestConntrackCollision: in the routing scenario's pod, the sidecar's own
// query to kube-dns and an application's query to kube-dns made from the
// same source port, one after the other, each go where the rules send
// them. NAT is decided on a flow's first packet: without the init step's
// conntrack zones, the second query reuses the first one's conntrack entry
// and its NAT decision. The application's query then reaches kube-dns in
// plaintext (a leak, and a public name kube-dns refuses), and the
// sidecar's comes back to the sidecar (a loop). Once per iptables backend.
func TestConntrackCollision(t *testing.T) {
	testkit.RequireTools(t, "iptables-legacy", "ip6tables-legacy")
	for _, backend := range []string{"nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			t.Parallel()
			s := newRouting(t)
			s.backend = backend
			s.serve(t)
			s.sidecar = s.startSidecar(t, "sidecar")
			t.Run("application after the sidecar", s.testLeak)
			t.Run("sidecar after an application", s.testLoop)
		})
	}
}

// kdigFrom asks kube-dns's Service IP over UDP as the application, from
// source port port.
func (s *routing) kdigFrom(port int, name, qtype string) netnstest.Result {
	return run(s.pod, appUID, nil, "kdig", "-b", routePodIP+"#"+strconv.Itoa(port), "@"+dnsServiceIP,
		"+notcp", "+timeout=3", "+retry=0", "+short", name, qtype)
}

// sidecarPorts returns the source ports of the queries for name that left
// the pod for kube-dns, as the capture c saw them.
func sidecarPorts(t *testing.T, c *netnstest.Capture, name string) []int {
	t.Helper()
	re := regexp.MustCompile(`(?i) IP ` + regexp.QuoteMeta(routePodIP) + `\.(\d+) > ` + regexp.QuoteMeta(dnsServiceIP) +
		`\.53: .* A\? ` + regexp.QuoteMeta(name) + ` `)
	var ports []int
	for _, l := range c.Packets(t, "udp and dst host "+dnsServiceIP+" and dst port 53") {
		if m := re.FindStringSubmatch(l); m != nil {
			p, err := strconv.Atoi(m[1])
			if err != nil {
				t.Fatal(err)
			}
			ports = append(ports, p)
		}
	}
	return ports
}

// testLeak: the application asks for a cluster name, which the sidecar
// forwards to kube-dns from a port the capture shows; then the application
// asks for a public name from that port. The sidecar must answer it (from
// the DoT upstream), and kube-dns must never see it.
func (s *routing) testLeak(t *testing.T) {
	kube := s.cluster.Services[0]
	capture := netnstest.StartCapture(t, s.pod, podIface, s.dir)
	r := run(s.pod, appUID, nil, "kdig", "@"+dnsServiceIP, "+notcp", "+timeout=3", "+retry=0", "+short", kube.FQDN, "A")
	capture.Stop(t)
	if r.Err != nil || strings.TrimSpace(r.Stdout) != kube.IPv4.String() {
		t.Fatalf("the cluster name: want %s; got %v", kube.IPv4, r)
	}
	ports := sidecarPorts(t, capture, kube.FQDN)
	if len(ports) == 0 {
		t.Fatalf("no query of the sidecar's for %s to kube-dns in the capture", kube.FQDN)
	}
	port := ports[len(ports)-1] // the one answered, should the sidecar have retried
	const name = "api.example.com"
	before := s.cluster.Sync(t)
	r = s.kdigFrom(port, name, "A")
	at := clusterNames(s.cluster.Sync(t)[len(before):])
	if r.Err != nil || strings.TrimSpace(r.Stdout) != publicNames[name][0] {
		t.Errorf("%s from the port of the sidecar's flow (%d): want %s from the sidecar; got %v", name, port, publicNames[name][0], r)
	}
	if len(at) != 0 {
		t.Errorf("leak: kube-dns received %q, the application's query, in plaintext", at)
	}
}

// testLoop: the application leaves a redirected flow from each port of a
// small range (asking the sidecar for its canary); the sidecar, whose
// ephemeral ports the range then is, asks kube-dns for a cluster name. Its
// query must reach kube-dns (the capture shows from which port), not come
// back to the sidecar.
func (s *routing) testLoop(t *testing.T) {
	const low, high = 45000, 45003
	for p := low; p <= high; p++ {
		r := s.kdigFrom(p, check.CanaryName, "TXT")
		if r.Err != nil || !strings.Contains(r.Stdout, strings.TrimSpace(check.CanaryPrefix)) {
			t.Fatalf("the canary from port %d: want the sidecar's answer; got %v", p, r)
		}
	}
	const key = "net.ipv4.ip_local_port_range"
	old := strings.Join(strings.Fields(s.pod.Must(t, "sysctl", "-n", key)), " ")
	s.pod.Must(t, "sysctl", "-qw", fmt.Sprintf("%s=%d %d", key, low, high))
	defer s.pod.Must(t, "sysctl", "-qw", key+"="+old)

	web := s.cluster.Services[2]
	capture := netnstest.StartCapture(t, s.pod, podIface, s.dir)
	r := s.kdigFrom(high+1000, web.FQDN, "A")
	capture.Stop(t)
	if r.Err != nil || strings.TrimSpace(r.Stdout) != web.IPv4.String() {
		t.Errorf("%s: want %s from kube-dns; got %v", web.FQDN, web.IPv4, r)
	}
	ports := sidecarPorts(t, capture, web.FQDN)
	if len(ports) == 0 {
		t.Fatalf("loop: no query for %s left the pod for kube-dns", web.FQDN)
	}
	for _, p := range ports {
		if p < low || p > high {
			t.Errorf("the sidecar's query left from port %d, outside %d-%d: its flow could not collide", p, low, high)
		}
	}
}
