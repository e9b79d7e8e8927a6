package interop

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/corednstest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

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
