package corednstest

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// TestMainGo: the generated program imports exactly Plugins and coremain,
// and the build's key changes with anything that changes the binary.
func TestMainGo(t *testing.T) {
	src := mainGo()
	for _, p := range Plugins {
		if !strings.Contains(src, `_ "github.com/coredns/coredns/plugin/`+p+`"`) {
			t.Errorf("main.go does not import plugin %s:\n%s", p, src)
		}
	}
	if n := strings.Count(src, `"github.com/coredns/coredns/`); n != len(Plugins)+1 {
		t.Errorf("main.go imports %d CoreDNS packages, want the %d plugins and coremain:\n%s", n, len(Plugins), src)
	}
	if !strings.Contains(src, "coremain.Run()") {
		t.Errorf("main.go does not run coremain:\n%s", src)
	}
	base := buildKey("go1.26.0")
	if !strings.HasPrefix(base, Version+"-") {
		t.Errorf("key %q does not start with the version", base)
	}
	if buildKey("go1.26.1") == base {
		t.Error("the key does not change with the Go version")
	}
	saved := Plugins
	t.Cleanup(func() { Plugins = saved })
	Plugins = append(append([]string{}, saved...), "cache")
	if buildKey("go1.26.0") == base {
		t.Error("the key does not change with the plugins")
	}
}

func TestReverseName(t *testing.T) {
	for addr, want := range map[string]string{
		"10.96.0.1":        "1.0.96.10.in-addr.arpa.",
		"fd00:10:96::1234": "4.3.2.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.",
	} {
		if got := ReverseName(netip.MustParseAddr(addr)); got != want {
			t.Errorf("ReverseName(%s) = %s, want %s", addr, got, want)
		}
		if want != dnsReverse(t, addr) {
			t.Errorf("ReverseName(%s) disagrees with miekg/dns's %s", addr, dnsReverse(t, addr))
		}
	}
}

func dnsReverse(t *testing.T, addr string) string {
	r, err := dns.ReverseAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestServesTheCluster asks what a pod asks kube-dns, over each transport,
// and finds every query in the log with its transport and rcode.
func TestServesTheCluster(t *testing.T) {
	c := Start(t, Options{
		Zones: []Zone{{Origin: "c.example.internal", Records: []string{"node1.c.example.internal. 5 IN A 10.128.0.2"}}},
	})
	kube, web := c.Services[0], c.Services[2]
	if kube.FQDN != "kubernetes.default.svc.cluster.local." || c.Domain != "cluster.local." {
		t.Fatalf("names: %q in %q", kube.FQDN, c.Domain)
	}
	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		answer string // the answer's data, "" for none
	}{
		{"service A", kube.FQDN, dns.TypeA, dns.RcodeSuccess, "10.96.0.1"},
		{"dual-stack service AAAA", web.FQDN, dns.TypeAAAA, dns.RcodeSuccess, "fd00:10:96::1234"},
		{"v4-only service AAAA is NODATA", kube.FQDN, dns.TypeAAAA, dns.RcodeSuccess, ""},
		{"namespace is an empty non-terminal", "default.svc.cluster.local.", dns.TypeA, dns.RcodeSuccess, ""},
		{"unknown service", "nosuch.default.svc.cluster.local.", dns.TypeA, dns.RcodeNameError, ""},
		{"SOA", "cluster.local.", dns.TypeSOA, dns.RcodeSuccess, "ns.dns.cluster.local."},
		{"service PTR", ReverseName(kube.IPv4), dns.TypePTR, dns.RcodeSuccess, kube.FQDN},
		{"IPv6 service PTR", ReverseName(web.IPv6), dns.TypePTR, dns.RcodeSuccess, web.FQDN},
		{"unknown PTR", "9.9.9.10.in-addr.arpa.", dns.TypePTR, dns.RcodeNameError, ""},
		{"extra zone", "node1.c.example.internal.", dns.TypeA, dns.RcodeSuccess, "10.128.0.2"},
		{"public name refused", "api.example.com.", dns.TypeA, dns.RcodeRefused, ""},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sent := 0
	for _, tt := range tests {
		for _, network := range []string{"udp", "tcp", "tls"} {
			m := new(dns.Msg)
			m.SetQuestion(tt.qname, tt.qtype)
			r, err := c.Exchange(ctx, network, m)
			sent++
			if err != nil {
				t.Fatalf("%s over %s: %v", tt.name, network, err)
			}
			if r.Rcode != tt.rcode {
				t.Errorf("%s over %s: rcode %s, want %s", tt.name, network, dns.RcodeToString[r.Rcode], dns.RcodeToString[tt.rcode])
			}
			var got []string
			for _, rr := range r.Answer {
				got = append(got, strings.TrimPrefix(rr.String(), rr.Header().String()))
			}
			if tt.answer == "" && len(got) != 0 || tt.answer != "" && (len(got) != 1 || !strings.HasPrefix(got[0], tt.answer)) {
				t.Errorf("%s over %s: answer %q, want %q", tt.name, network, got, tt.answer)
			}
			// Negative answers carry the zone's SOA, as kube-dns's do.
			if tt.answer == "" && tt.rcode != dns.RcodeRefused {
				if len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA || r.Ns[0].Header().Ttl != TTL {
					t.Errorf("%s over %s: authority %v, want the zone's SOA with TTL %d", tt.name, network, r.Ns, TTL)
				}
			}
		}
	}
	// Each query's line is written after its reply, so lines of queries
	// sent one after another may come out of order: compare them as sets.
	qs := c.Sync(t)
	logged := map[Query]int{}
	for _, q := range qs {
		logged[q]++
	}
	for _, tt := range tests {
		for _, network := range []string{"udp", "tcp", "tls"} {
			want := Query{Transport: "dns", Proto: network, Remote: "127.0.0.1", Type: dns.TypeToString[tt.qtype], Name: tt.qname, Rcode: dns.RcodeToString[tt.rcode]}
			if network == "tls" {
				want.Transport, want.Proto = "tls", "tcp"
			}
			if logged[want] == 0 {
				t.Errorf("%s over %s: no log entry %v in\n%v", tt.name, network, want, qs)
			}
			logged[want]--
		}
	}
	// Besides, only Start's readiness probes.
	for q, n := range logged {
		if n > 0 && !(q.Name == c.Domain && q.Type == "SOA") {
			t.Errorf("%d unexpected log entries %v", n, q)
		}
	}
	if len(qs) < sent {
		t.Errorf("%d queries logged, want at least the %d sent", len(qs), sent)
	}
}

// TestSlowZone: names under SlowZone are answered, after SlowDelay.
func TestSlowZone(t *testing.T) {
	const delay = 300 * time.Millisecond
	c := Start(t, Options{SlowDelay: delay})
	if c.SlowZone != "slow.cluster.local." {
		t.Fatalf("SlowZone %q", c.SlowZone)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, network := range []string{"tcp", "tls"} {
		m := new(dns.Msg)
		m.SetQuestion("a."+c.SlowZone, dns.TypeA)
		start := time.Now()
		r, err := c.Exchange(ctx, network, m)
		if took := time.Since(start); err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || took < delay {
			t.Errorf("slow name over %s: %v %v after %v, want an answer after at least %v", network, r, err, took, delay)
		}
	}
	// The rest of the cluster domain is not slowed.
	m := new(dns.Msg)
	m.SetQuestion(c.Services[0].FQDN, dns.TypeA)
	start := time.Now()
	if r, err := c.Exchange(ctx, "udp", m); err != nil || len(r.Answer) != 1 || time.Since(start) >= delay {
		t.Errorf("service name: %v %v after %v", r, err, time.Since(start))
	}
}

// TestVersionIsTheBenchs: the load harness installs the CoreDNS the tests
// build, so that both measure and prove the same release.
func TestVersionIsTheBenchs(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), "sidecar", "bench", "setup.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "\nCOREDNS_VERSION="+Version+"\n") {
		t.Errorf("sidecar/bench/setup.sh does not install CoreDNS %s (COREDNS_VERSION)", Version)
	}
}

// TestRestart: stopped, the server answers nothing; restarted, it answers
// on the same addresses again.
func TestRestart(t *testing.T) {
	c := Start(t, Options{})
	addr, tlsAddr := c.Addr, c.TLSAddr
	if err := c.Proc.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m := new(dns.Msg)
	m.SetQuestion(c.Domain, dns.TypeSOA)
	if r, err := c.Exchange(ctx, "tcp", m); err == nil {
		t.Fatalf("stopped, it answered %v", r)
	}
	c.Restart(t)
	if c.Addr != addr || c.TLSAddr != tlsAddr {
		t.Errorf("restarted on %s and %s, was %s and %s", c.Addr, c.TLSAddr, addr, tlsAddr)
	}
	for _, network := range []string{"udp", "tls"} {
		m := new(dns.Msg)
		m.SetQuestion(c.Services[0].FQDN, dns.TypeA)
		if r, err := c.Exchange(ctx, network, m); err != nil || len(r.Answer) != 1 {
			t.Errorf("restarted, over %s: %v %v", network, r, err)
		}
	}
}
