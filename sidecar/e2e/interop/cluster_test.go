package interop

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/corednstest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

// nodeDomain is the node's search domain in the pod's resolv.conf, a zone
// the cluster's resolver answers.
const nodeDomain = "c.example.internal"

// podResolvConf writes the resolv.conf the kubelet gives a pod, as the
// sidecar reads it (RESOLV_CONF): its nameserver is not used when
// CLUSTER_DNS names the cluster's resolver, but its search list puts the
// sidecar in pod mode, where the search domains and private reverse zones
// go to the cluster's resolver too.
func podResolvConf(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "resolv.conf")
	content := "search default.svc.cluster.local svc.cluster.local cluster.local " + nodeDomain + "\n" +
		"nameserver 10.96.0.10\noptions ndots:5\n"
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// publicUpstream is a DoT upstream of its own, whose query log the test
// reads.
func publicUpstream(t *testing.T) *unboundtest.Server {
	return unboundtest.Start(t, unboundtest.Options{Names: 2, LogQueries: true})
}

// startCoreDNS runs the cluster's resolver with the node's domain served.
func startCoreDNS(t *testing.T) *corednstest.Server {
	return corednstest.Start(t, corednstest.Options{
		Zones: []corednstest.Zone{{Origin: nodeDomain, Records: []string{"node1." + nodeDomain + ". 5 IN A 10.128.0.2"}}},
	})
}

// TestClusterRouteToCoreDNS: the cluster's names, its search domains and
// its Services' PTR records reach the real CoreDNS over each transport a
// cluster route can use, and are answered; public names go to the DoT
// upstream and never to CoreDNS.
func TestClusterRouteToCoreDNS(t *testing.T) {
	t.Parallel()
	c := startCoreDNS(t)
	for _, tc := range []struct {
		name      string
		env       func() []string
		transport string // in CoreDNS's log
		proto     string
	}{
		{"CLUSTER_DNS dns://", func() []string { return []string{"CLUSTER_DNS=dns://" + c.Addr} }, "dns", "udp"},
		{"CLUSTER_DNS tcp://", func() []string { return []string{"CLUSTER_DNS=tcp://" + c.Addr} }, "dns", "tcp"},
		{"CLUSTER_DNS tls:// with ;ca=", func() []string {
			return []string{"CLUSTER_DNS=tls://" + c.TLSAddr + "#" + c.ServerName + ";ca=" + c.CAFile}
		}, "tls", "tcp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := publicUpstream(t)
			env := append([]string{
				fmt.Sprintf("UPSTREAMS=tls://%s#%s", up.Addr, up.ServerName), "TLS_CA_FILE=" + up.CAFile,
				"RESOLV_CONF=" + podResolvConf(t),
			}, tc.env()...)
			s := bintest.Start(t, env...)
			checkClusterRoute(t, s.DNS, c, up, tc.transport, tc.proto)
		})
	}
}

// checkClusterRoute queries the sidecar at addr for the cluster's names and
// a public one, and checks who was asked what.
func checkClusterRoute(t *testing.T, addr string, c *corednstest.Server, up *unboundtest.Server, transport, proto string) {
	t.Helper()
	kube, web := c.Services[0], c.Services[2]
	tests := []struct {
		qname  string
		qtype  uint16
		rcode  int
		answer string
		at     string // "cluster" or "public"
	}{
		{kube.FQDN, dns.TypeA, dns.RcodeSuccess, kube.IPv4.String(), "cluster"},
		{web.FQDN, dns.TypeAAAA, dns.RcodeSuccess, web.IPv6.String(), "cluster"},
		{"nosuch.default.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, "", "cluster"},
		{corednstest.ReverseName(kube.IPv4), dns.TypePTR, dns.RcodeSuccess, kube.FQDN, "cluster"},
		{corednstest.ReverseName(web.IPv6), dns.TypePTR, dns.RcodeSuccess, web.FQDN, "cluster"},
		{"node1." + nodeDomain + ".", dns.TypeA, dns.RcodeSuccess, "10.128.0.2", "cluster"},
		{up.Names[0].Name, dns.TypeA, dns.RcodeSuccess, up.Names[0].A.String(), "public"},
		{"api.example.com.", dns.TypeA, dns.RcodeNameError, "", "public"},
	}
	before := len(c.Sync(t))
	upBefore := upstreamNames(t, up)
	client := &dns.Client{Timeout: 5 * time.Second}
	for _, tt := range tests {
		m := new(dns.Msg)
		m.SetQuestion(tt.qname, tt.qtype)
		r, _, err := client.Exchange(m, addr)
		if err != nil {
			t.Fatalf("%s %s: %v", tt.qname, dns.TypeToString[tt.qtype], err)
		}
		if r.Rcode != tt.rcode {
			t.Errorf("%s %s: rcode %s, want %s", tt.qname, dns.TypeToString[tt.qtype], dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
		}
		var got []string
		for _, rr := range r.Answer {
			got = append(got, strings.TrimPrefix(rr.String(), rr.Header().String()))
		}
		if tt.answer != "" && (len(got) != 1 || got[0] != tt.answer) || tt.answer == "" && len(got) != 0 {
			t.Errorf("%s %s: answer %q, want %q", tt.qname, dns.TypeToString[tt.qtype], got, tt.answer)
		}
	}
	var wantCluster, wantPublic []string
	for _, tt := range tests {
		q := strings.ToLower(tt.qname) + " " + dns.TypeToString[tt.qtype]
		if tt.at == "cluster" {
			wantCluster = append(wantCluster, transport+"/"+proto+" "+q)
		} else {
			wantPublic = append(wantPublic, q)
		}
	}
	var gotCluster []string
	for _, q := range c.Sync(t)[before:] {
		if q.Type == "SOA" && q.Name == c.Domain {
			continue // the route's health probe
		}
		gotCluster = append(gotCluster, q.Transport+"/"+q.Proto+" "+strings.ToLower(q.Name)+" "+q.Type)
	}
	if !sameSet(gotCluster, wantCluster) {
		t.Errorf("CoreDNS received %q\nwant exactly %q", gotCluster, wantCluster)
	}
	if got := upstreamNames(t, up)[len(upBefore):]; !sameSet(got, wantPublic) {
		t.Errorf("the public upstream received %q\nwant exactly %q", got, wantPublic)
	}
}

// upstreamNames lists the DoT upstream's queries, "name TYPE", without
// the health probes of the root.
func upstreamNames(t *testing.T, up *unboundtest.Server) []string {
	t.Helper()
	qs, err := up.Queries()
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

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestRouteToCoreDNSOverTLS: a ROUTES entry for the cluster domain over
// tls:// with ;ca= (CLUSTER_DNS off) reaches CoreDNS's tls:// server block;
// a ;ca= that does not hold CoreDNS's CA gives SERVFAIL, and the query never
// goes to CoreDNS's plaintext port nor to the public upstream instead.
func TestRouteToCoreDNSOverTLS(t *testing.T) {
	t.Parallel()
	c := startCoreDNS(t)
	up := publicUpstream(t)
	other, err := testpki.NewCA("not CoreDNS's CA")
	if err != nil {
		t.Fatal(err)
	}
	otherFile := filepath.Join(t.TempDir(), "other-ca.pem")
	if err := os.WriteFile(otherFile, other.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, ca string
		rcode    int
	}{{"CoreDNS's CA", c.CAFile, dns.RcodeSuccess}, {"another CA", otherFile, dns.RcodeServerFailure}} {
		t.Run(tc.name, func(t *testing.T) {
			s := bintest.Start(t,
				fmt.Sprintf("UPSTREAMS=tls://%s#%s", up.Addr, up.ServerName), "TLS_CA_FILE="+up.CAFile,
				"CLUSTER_DNS=off", "RETRY_MAX_ATTEMPTS=1",
				"ROUTES=cluster.local=tls://"+c.TLSAddr+"#"+c.ServerName+";ca="+tc.ca)
			before, upBefore := len(c.Sync(t)), len(upstreamNames(t, up))
			m := new(dns.Msg)
			m.SetQuestion(c.Services[0].FQDN, dns.TypeA)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			r, _, err := (&dns.Client{}).ExchangeContext(ctx, m, s.DNS)
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != tc.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
			}
			var plain, viaTLS int
			for _, q := range c.Sync(t)[before:] {
				if q.Transport == "dns" {
					plain++
				} else if q.Name == c.Services[0].FQDN {
					viaTLS++
				}
			}
			if want := map[int]int{dns.RcodeSuccess: 1, dns.RcodeServerFailure: 0}[tc.rcode]; plain != 0 || viaTLS != want {
				t.Errorf("CoreDNS saw %d plaintext queries and %d over TLS, want none and %d", plain, viaTLS, want)
			}
			if got := upstreamNames(t, up)[upBefore:]; len(got) != 0 {
				t.Errorf("the cluster's name went to the public upstream: %q", got)
			}
		})
	}
}

// TestClusterResolverDown: with CoreDNS stopped, the cluster's names get
// SERVFAIL with an extended error within QUERY_TIMEOUT, never an answer from
// the public upstream, and public names are answered as before.
func TestClusterResolverDown(t *testing.T) {
	t.Parallel()
	c := startCoreDNS(t)
	up := publicUpstream(t)
	const queryTimeout = time.Second
	s := bintest.Start(t,
		fmt.Sprintf("UPSTREAMS=tls://%s#%s", up.Addr, up.ServerName), "TLS_CA_FILE="+up.CAFile,
		"RESOLV_CONF="+podResolvConf(t), "CLUSTER_DNS=dns://"+c.Addr, "QUERY_TIMEOUT="+queryTimeout.String())
	if err := c.Proc.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	upBefore := len(upstreamNames(t, up))
	client := &dns.Client{Timeout: 5 * time.Second}
	for _, name := range []string{c.Services[0].FQDN, corednstest.ReverseName(c.Services[0].IPv4), "node1." + nodeDomain + "."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.SetEdns0(1232, false)
		start := time.Now()
		r, _, err := client.Exchange(m, s.DNS)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Rcode != dns.RcodeServerFailure || took > queryTimeout+500*time.Millisecond {
			t.Errorf("%s: %s after %v, want SERVFAIL within QUERY_TIMEOUT %v", name, dns.RcodeToString[r.Rcode], took, queryTimeout)
		}
		var ede *dns.EDNS0_EDE
		if opt := r.IsEdns0(); opt != nil {
			for _, o := range opt.Option {
				if e, ok := o.(*dns.EDNS0_EDE); ok {
					ede = e
				}
			}
		}
		if ede == nil {
			t.Errorf("%s: SERVFAIL without an extended DNS error", name)
		}
	}
	if got := upstreamNames(t, up)[upBefore:]; len(got) != 0 {
		t.Errorf("with the cluster's resolver down, its names went to the public upstream: %q", got)
	}
	m := new(dns.Msg)
	m.SetQuestion(up.Names[1].Name, dns.TypeA)
	r, _, err := client.Exchange(m, s.DNS)
	if err != nil || unboundtest.CheckA(r, up.Names[1]) != nil {
		t.Errorf("a public name with the cluster's resolver down: %v %v", r, err)
	}
}

// TestDocsCertificateForCoreDNS runs the openssl commands with which
// docs/kubernetes.md makes CoreDNS's certificate, serves DNS-over-TLS from
// CoreDNS with it, and resolves a Service through the sidecar set up as
// components/cluster-dns-tls sets it up: the name and the CA the docs use.
func TestDocsCertificateForCoreDNS(t *testing.T) {
	t.Parallel()
	tools := testkit.RequireTools(t, "openssl", "sh")
	script := docsCertificateCommands(t)
	dir := t.TempDir()
	cmd := exec.Command(tools["sh"], "-eu", "-c", script)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the docs' commands:\n%s\n%v\n%s", script, err, out)
	}
	const serverName = "kube-dns.kube-system.svc.cluster.local"
	c := corednstest.Start(t, corednstest.Options{
		ServerName: serverName,
		CertFile:   filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), CAFile: filepath.Join(dir, "ca.crt"),
	})
	up := publicUpstream(t)
	s := bintest.Start(t,
		fmt.Sprintf("UPSTREAMS=tls://%s#%s", up.Addr, up.ServerName), "TLS_CA_FILE="+up.CAFile,
		"RESOLV_CONF="+podResolvConf(t),
		"CLUSTER_DNS=tls://"+c.TLSAddr+"#"+serverName+";ca="+filepath.Join(dir, "ca.crt"))
	m := new(dns.Msg)
	m.SetQuestion(c.Services[0].FQDN, dns.TypeA)
	r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, s.DNS)
	if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("%s through the sidecar and CoreDNS with the docs' certificate: %v %v", c.Services[0].FQDN, r, err)
	}
}

// docsCertificateCommands returns the openssl lines of the sh block of
// docs/kubernetes.md that makes CoreDNS's certificate (the kubectl line,
// which needs a cluster, left out).
func docsCertificateCommands(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), "docs", "kubernetes.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "**A certificate for CoreDNS**")
	if !ok {
		t.Fatal("docs/kubernetes.md: no step **A certificate for CoreDNS**")
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	block, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/kubernetes.md: no sh block in the certificate step")
	}
	var lines []string
	for _, l := range strings.Split(block, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "kubectl ") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "openssl ") {
		t.Fatalf("docs/kubernetes.md: the certificate step's block is not openssl commands: %q", block)
	}
	return strings.Join(lines, "\n")
}

// TestClusterResolverComesBack: CoreDNS stops, the sidecar marks it down
// (its route answers SERVFAIL at once), CoreDNS comes back on the same
// address, and the cluster's names are answered again within about a
// second: the route's probe is a name CoreDNS answers from its own data,
// and real queries probe it too while it is down.
func TestClusterResolverComesBack(t *testing.T) {
	t.Parallel()
	c := startCoreDNS(t)
	up := publicUpstream(t)
	s := bintest.Start(t,
		fmt.Sprintf("UPSTREAMS=tls://%s#%s", up.Addr, up.ServerName), "TLS_CA_FILE="+up.CAFile,
		"RESOLV_CONF="+podResolvConf(t), "CLUSTER_DNS=dns://"+c.Addr, "QUERY_TIMEOUT=1s")
	client := &dns.Client{Timeout: 3 * time.Second}
	ask := func() (int, error) {
		m := new(dns.Msg)
		m.SetQuestion(c.Services[0].FQDN, dns.TypeA)
		r, _, err := client.Exchange(m, s.DNS)
		if err != nil {
			return -1, err
		}
		return r.Rcode, nil
	}
	if rc, err := ask(); rc != dns.RcodeSuccess {
		t.Fatalf("with CoreDNS up: %s %v", dns.RcodeToString[rc], err)
	}
	if err := c.Proc.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	down := `dot_sidecar_upstream_health_state{route="cluster",upstream="dns://` + c.Addr + `"} 0`
	testkit.WaitFor(t, "the sidecar to mark CoreDNS down", 10*time.Second, func() error {
		_, _ = ask()
		if _, body := s.Get("/metrics"); !strings.Contains(body, down) {
			return fmt.Errorf("no %s in /metrics yet", down)
		}
		return nil
	})

	c.Restart(t)
	back := time.Now()
	testkit.WaitFor(t, "the cluster's names to be answered again", 5*time.Second, func() error {
		if rc, err := ask(); rc != dns.RcodeSuccess {
			return fmt.Errorf("%s %v", dns.RcodeToString[rc], err)
		}
		return nil
	})
	took := time.Since(back)
	t.Logf("cluster names answered again %v after CoreDNS answered", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Errorf("the route came back %v after CoreDNS did, want about a second", took)
	}
}
