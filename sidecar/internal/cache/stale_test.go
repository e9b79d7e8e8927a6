package cache

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// realRouter is the router a pod's sidecar relays through, on real
// clients and servers: UPSTREAMS a group of two DoT upstreams, the cluster
// route a dns:// upstream. It returns the servers, so that a test can stop
// them.
func realRouter(t *testing.T) (*router.Router, []*dnstest.Server, *dnstest.PlainServer) {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	m := upstream.NewMetrics(prometheus.NewRegistry())
	var dots []*dnstest.Server
	var members []upstream.Upstream
	for range 2 {
		s := dnstest.New(t, dnstest.Options{})
		d, err := upstream.NewDoT(upstream.DoTOptions{
			Addr: s.Addr, ServerName: s.ServerName, Trust: upstream.NewTrust(s.CAPool, nil),
			PoolSize: 1, DialTimeout: time.Second, IdleTimeout: 30 * time.Second, MaxAge: 5 * time.Minute,
			MaxInFlightPerConn: 100, QueryTimeout: 2 * time.Second, Logger: log, Metrics: m,
		})
		if err != nil {
			t.Fatal(err)
		}
		dots, members = append(dots, s), append(members, d)
	}
	g, err := upstream.NewGroup(upstream.GroupOptions{
		Upstreams: members, Policy: upstream.Sequential, MaxAttempts: 2, BaseDelay: 10 * time.Millisecond,
		MaxFails: 3, ProbeInterval: time.Second, ProbeTimeout: time.Second, PartialWindow: 5 * time.Second, Logger: log, Metrics: m,
	})
	if err != nil {
		t.Fatal(err)
	}
	plain := dnstest.NewPlain(t, dnstest.PlainOptions{})
	cm := m.ForRoute("cluster")
	p, err := upstream.NewPlain(upstream.PlainOptions{Addr: plain.Addr, DialTimeout: time.Second, QueryTimeout: 2 * time.Second, Logger: log, Metrics: cm})
	if err != nil {
		t.Fatal(err)
	}
	cg, err := upstream.NewGroup(upstream.GroupOptions{
		Upstreams: []upstream.Upstream{p}, Policy: upstream.Sequential, MaxAttempts: 2, BaseDelay: 10 * time.Millisecond,
		MaxFails: 3, ProbeInterval: time.Second, ProbeTimeout: time.Second, PartialWindow: 5 * time.Second, Logger: log, Metrics: cm,
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := router.New(router.Options{
		Default:    g,
		Routes:     []router.RouteOptions{{Name: "cluster", Zones: []string{"cluster.local"}, Upstream: cg, Cluster: true}},
		UDPSize:    1232,
		Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return r, dots, plain
}

// TestStaleWhenUpstreamsDown: with every upstream down, an expired public
// answer is served stale (TTL 30, EDE 3) instead of SERVFAIL, at once
// while the failure is rechecked, until StaleMax; a cluster name is not.
func TestStaleWhenUpstreamsDown(t *testing.T) {
	r, dots, plain := realRouter(t)
	h := newHarness(t, Options{Upstream: r, StaleMax: time.Hour, StaleExcludeCluster: true, StaleRecheck: 30 * time.Second})
	pub := query(t, "www.example.com.", dns.TypeA, true, false)
	cluster := query(t, "kubernetes.default.svc.cluster.local.", dns.TypeA, true, false)
	for _, q := range []dnswire.Msg{pub, cluster} {
		if a := h.mustAsk(t, q); len(a.Answer) != 1 || a.Answer[0].Header().Ttl != 60 {
			t.Fatalf("%s: %v", q.QNameText(), a)
		}
	}
	for _, s := range dots {
		_ = s.Close()
	}
	plain.Stop()
	h.clock.advance(61 * time.Second)

	a := h.mustAsk(t, pub)
	if a.Rcode != dns.RcodeSuccess || len(a.Answer) != 1 || a.Answer[0].Header().Ttl != staleTTL || !staleEDE(a) {
		t.Fatalf("public name with upstreams down: %v; want the stale answer, TTL 30, EDE 3", a)
	}
	if _, err := h.ask(t, cluster); err == nil {
		t.Fatal("a cluster name was served stale")
	}
	// While the failure is rechecked, the read loop answers stale itself.
	if a, ok := h.look(t, pub); !ok || !staleEDE(a) {
		t.Errorf("Lookup during the recheck: %v, %v", ok, a)
	}
	if _, ok := h.look(t, cluster); ok {
		t.Error("Lookup served a cluster name stale")
	}
	if got := counter(h.m.stale); got != 2 {
		t.Errorf("served_stale %v, want 2", got)
	}
	// After the recheck, the upstream is tried again, and fails again.
	h.clock.advance(30 * time.Second)
	if _, ok := h.look(t, pub); ok {
		t.Error("Lookup served stale after the recheck ran out, without trying the upstream")
	}
	if a := h.mustAsk(t, pub); !staleEDE(a) {
		t.Errorf("after the recheck: %v", a)
	}
	// Past StaleMax, no more.
	h.clock.advance(time.Hour)
	if a, err := h.ask(t, pub); err == nil {
		t.Errorf("served past StaleMax: %v", a)
	}
}

// expiredEntry starts a harness with opts, asks it for name (type A, with
// EDNS) and moves its clock past the answer's TTL of 300 s: the entry has
// just expired.
func expiredEntry(t *testing.T, opts Options, name string) (*harness, dnswire.Msg) {
	t.Helper()
	h := newHarness(t, opts)
	q := query(t, name, dns.TypeA, true, false)
	h.mustAsk(t, q)
	h.clock.advance(301 * time.Second)
	return h, q
}

// TestStaleWhenUpstreamSlow: a refresh slower than StaleClientTimeout
// gives the client the stale answer, and updates the entry when it comes.
func TestStaleWhenUpstreamSlow(t *testing.T) {
	h, q := expiredEntry(t, Options{StaleMax: time.Hour, StaleClientTimeout: 50 * time.Millisecond}, "slow.example.com.")
	gate := make(chan struct{})
	h.pub.gate = gate
	h.pub.handler = answerA(600)
	if a := h.mustAsk(t, q); !staleEDE(a) || a.Answer[0].Header().Ttl != staleTTL {
		t.Fatalf("slow refresh: %v; want the stale answer", a)
	}
	close(gate)
	waitFor(t, "the late refresh to replace the entry", func() bool {
		a, ok := h.look(t, q)
		return ok && !staleEDE(a) && a.Answer[0].Header().Ttl == 600
	})
	if n := h.pub.queries.Load(); n != 2 {
		t.Errorf("upstream got %d queries, want 2", n)
	}
}

// TestServfailDoesNotHideStale: an upstream's SERVFAIL for an expired
// entry gives the stale answer, and is not kept in its place.
func TestServfailDoesNotHideStale(t *testing.T) {
	h, q := expiredEntry(t, Options{StaleMax: time.Hour, ServfailTTL: 5 * time.Second}, "www.example.com.")
	h.pub.handler = func(q *dns.Msg) *dns.Msg { return replyTo(q, dns.RcodeServerFailure) }
	if a := h.mustAsk(t, q); a.Rcode != dns.RcodeSuccess || !staleEDE(a) {
		t.Fatalf("SERVFAIL upstream: %v; want the stale answer", a)
	}
	if a, ok := h.look(t, q); !ok || a.Rcode != dns.RcodeSuccess || !staleEDE(a) {
		t.Errorf("then Lookup: %v, %v; want the stale answer, not a kept SERVFAIL", ok, a)
	}
}

// TestNoStale: names in StaleExclude, and everything with StaleMax 0, get
// the failure.
func TestNoStale(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		q    string
	}{
		{"StaleMax 0", Options{}, "www.example.com."},
		{"excluded zone", Options{StaleMax: time.Hour, StaleExclude: []string{"Corp.Example"}}, "db.corp.example."},
		{"private reverse zone", Options{StaleMax: time.Hour, StaleExcludeCluster: true}, "1.0.0.10.in-addr.arpa."},
		{"plaintext route", Options{StaleMax: time.Hour, StaleExcludeCluster: true}, "db.lan.example."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, q := expiredEntry(t, tt.opts, tt.q)
			h.pub.handler = func(*dns.Msg) *dns.Msg { return nil }
			_, err := h.ask(t, q)
			if !errors.Is(err, upstream.ErrUnreachable) {
				t.Errorf("got %v, want the upstream's failure", err)
			}
		})
	}
	// Names outside the excluded zone are still served stale.
	h, q := expiredEntry(t, Options{StaleMax: time.Hour, StaleExclude: []string{"corp.example"}}, "notcorp.example.")
	h.pub.handler = func(*dns.Msg) *dns.Msg { return nil }
	if a := h.mustAsk(t, q); !staleEDE(a) {
		t.Errorf("a name beside the excluded zone: %v", a)
	}
}

// TestStaleClientGone: a client whose deadline ends first still gets the
// stale answer rather than an error.
func TestStaleClientGone(t *testing.T) {
	h, q := expiredEntry(t, Options{StaleMax: time.Hour, StaleClientTimeout: time.Hour}, "www.example.com.")
	h.pub.gate = make(chan struct{}) // never opens: the refresh waits for its own deadline
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	ans, err := h.Exchange(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if a := decode(t, ans.Wire(), q); !staleEDE(a) {
		t.Errorf("got %v", a)
	}
}
