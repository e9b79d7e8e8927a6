package main

import (
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestCacheSizeZero: with CACHE_SIZE=0 every query reaches the upstream, as
// without a cache; with the default, a repeated one does not.
func TestCacheSizeZero(t *testing.T) {
	for _, tt := range []struct {
		env  []string
		want int
	}{{[]string{"CACHE_SIZE=0"}, 4}, {nil, 1}} {
		rs := startRoutedSidecar(t, tt.env...)
		for _, network := range []string{"udp", "tcp", "udp", "tcp"} {
			if r := rs.ask(t, network, "www.example.com.", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Fatalf("%v: %v", tt.env, r)
			}
		}
		if got := len(rs.dot.get()); got != tt.want {
			t.Errorf("%v: the upstream got %d queries for 4 identical ones, want %d", tt.env, got, tt.want)
		}
	}
}

// TestCacheNeverServesClusterNamesStale: with the cluster's resolver down
// and its answer expired, a cluster name gets SERVFAIL, while a public name
// whose upstream is down is served stale: the default CACHE_STALE_EXCLUDE
// (auto) covers the cluster route.
func TestCacheNeverServesClusterNamesStale(t *testing.T) {
	// dnstest answers with TTL 60; a minute of waiting is too long for a
	// test, so both entries are made to expire by a 1 s CACHE_MAX_TTL.
	rs := startRoutedSidecar(t, "CACHE_MAX_TTL=1s", "CACHE_STALE_CLIENT_TIMEOUT=200ms")
	cluster, public := "kubernetes.default.svc.cluster.local.", "www.example.com."
	for _, name := range []string{cluster, public} {
		if r := rs.ask(t, "udp", name, dns.TypeA); r.Rcode != dns.RcodeSuccess {
			t.Fatalf("%s: %v", name, r)
		}
	}
	rs.kubeDNS.Stop()
	rs.dotServer.Behavior.Drop.Store(true)
	// Fresh hits until the entry expires, then the stale answer.
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := rs.ask(t, "udp", public, dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("public name, upstream silent: %v; want an answer, fresh or stale", r)
		}
		if e := ede(r); e != nil && e.InfoCode == dns.ExtendedErrorCodeStaleAnswer {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the public name was never served stale")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := rs.ask(t, "udp", cluster, dns.TypeA); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("cluster name, resolver down: %v; want SERVFAIL", r)
	}
	for _, n := range rs.dot.get() {
		if strings.HasSuffix(n, "cluster.local.") {
			t.Errorf("%s reached the public upstream", n)
		}
	}
}
