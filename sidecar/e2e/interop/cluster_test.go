package interop

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

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
