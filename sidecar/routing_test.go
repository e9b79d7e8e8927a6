package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/server"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// namesSeen records the names a DoT test server was asked.
type namesSeen struct {
	mu    sync.Mutex
	names []string
}

func (n *namesSeen) handler(q *dns.Msg) *dns.Msg {
	n.mu.Lock()
	n.names = append(n.names, strings.ToLower(q.Question[0].Name))
	n.mu.Unlock()
	return dnstest.DefaultHandler(q)
}

func (n *namesSeen) get() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.names)
}

// routedSidecar is the sidecar's relay as serve wires it (planRoutes,
// newRouting, newFront, server.New), on a loopback port, with a DoT test upstream
// for UPSTREAMS, an in-process plaintext "kube-dns" for the cluster route
// and another for a tcp:// route.
type routedSidecar struct {
	srv              *server.Server
	dot              *namesSeen
	dotServer        *dnstest.Server
	kubeDNS, corpDNS *dnstest.PlainServer
	reg              *prometheus.Registry
}

func startRoutedSidecar(t *testing.T, environ ...string) *routedSidecar {
	t.Helper()
	rs := &routedSidecar{dot: &namesSeen{}, reg: prometheus.NewRegistry()}
	ds := dnstest.New(t, dnstest.Options{Handler: rs.dot.handler})
	rs.dotServer = ds
	rs.kubeDNS = dnstest.NewPlain(t, dnstest.PlainOptions{})
	rs.corpDNS = dnstest.NewPlain(t, dnstest.PlainOptions{IP: netip.MustParseAddr("127.0.0.2")})
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	resolvConf := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(caFile, ds.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	// The kubelet's file; its nameserver is kube-dns's Service IP, which
	// CLUSTER_DNS replaces here by the test server's address and port.
	if err := os.WriteFile(resolvConf, []byte(kubeletResolvConf), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(nil, append([]string{
		"UPSTREAMS=tls://" + ds.Addr.String() + "#" + ds.ServerName,
		"TLS_CA_FILE=" + caFile,
		"CLUSTER_DNS=dns://" + rs.kubeDNS.Addr.String(),
		"RESOLV_CONF=" + resolvConf,
		"ROUTES=corp.example=tcp://" + rs.corpDNS.Addr.String(),
		"QUERY_TIMEOUT=1s",
	}, environ...))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	trust, err := loadTrust(cfg)
	if err != nil {
		t.Fatal(err)
	}
	plan := planRoutes(cfg)
	if !plan.podMode {
		t.Fatal("not in pod mode with the kubelet's resolv.conf")
	}
	rt, err := newRouting(cfg, plan, trust, log, rs.reg)
	if err != nil {
		t.Fatal(err)
	}
	front, hits, err := newFront(cfg, rt, log, rs.reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = front.Close() })
	rs.srv, err = server.New(server.Options{
		BindAddrs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, BindExplicit: true, Proto: "both",
		Upstream: front, Cache: hits, QueryTimeout: cfg.QueryTimeout, UDPMaxSize: cfg.UDPMaxSize,
		TCPIdleTimeout: cfg.TCPIdleTimeout, TCPMaxConns: cfg.TCPMaxConns, TCPMaxInFlight: cfg.TCPMaxInflight,
		TCPMaxUnread: cfg.TCPMaxUnread, MaxInFlight: cfg.MaxInflight, Logger: log, Registerer: rs.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rs.srv.Shutdown(context.Background()) })
	return rs
}

func (rs *routedSidecar) ask(t *testing.T, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	var addr string
	for _, a := range rs.srv.Addrs() {
		if a.Network() == network {
			addr = a.String()
		}
	}
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.SetEdns0(1232, false)
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(q, addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

// TestRoutingWhichNamesGoWhere: cluster, search-domain and private reverse
// names reach only the cluster's resolver, a routed zone only its own,
// public names only the DoT upstream, and special-use names neither.
func TestRoutingWhichNamesGoWhere(t *testing.T) {
	rs := startRoutedSidecar(t)
	cluster := []string{
		"kubernetes.default.svc.cluster.local.",
		"api.example.com.team-a.svc.cluster.local.", // the search list's first try
		"api.example.com.svc.cluster.local.",
		"api.example.com.cluster.local.",
		"ip-10-0-0-7.ec2.internal.", // the node's search domain
		"api.example.com.ec2.internal.",
		"10.0.96.10.in-addr.arpa.",
		"1.0.0.127.in-addr.arpa.",
		"7.1.64.100.in-addr.arpa.",
		"a.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
	}
	corp := []string{"wiki.corp.example."}
	public := []string{"api.example.com.", "www.example.org.", "8.8.8.8.in-addr.arpa."}
	special := []string{"localhost.", "db.localhost.", "printer.local.", "x.onion.", "y.invalid.", "nas.home.arpa."}
	for _, network := range []string{"udp", "tcp"} {
		for _, set := range [][]string{cluster, corp, public, special} {
			for _, name := range set {
				for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
					r := rs.ask(t, network, name, qtype)
					if r.Rcode == dns.RcodeServerFailure {
						t.Errorf("%s: SERVFAIL", name)
					}
				}
			}
		}
	}
	arrived := func(names []string) []string {
		var out []string
		for _, n := range names {
			if !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
		slices.Sort(out)
		return out
	}
	sorted := func(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
	if got := arrived(rs.kubeDNS.Names()); !slices.Equal(got, sorted(cluster)) {
		t.Errorf("the cluster's resolver was asked\n %q\nwant\n %q", got, sorted(cluster))
	}
	if got := arrived(rs.corpDNS.Names()); !slices.Equal(got, corp) {
		t.Errorf("corp.example's resolver was asked %q, want %q", got, corp)
	}
	if got := arrived(rs.dot.get()); !slices.Equal(got, sorted(public)) {
		t.Errorf("the DoT upstream was asked\n %q\nwant\n %q", got, sorted(public))
	}
	for _, q := range rs.corpDNS.Queries() {
		if q.Proto != "tcp" {
			t.Errorf("tcp:// route queried over %s", q.Proto)
		}
	}
	// The special names were answered by the sidecar itself.
	if r := rs.ask(t, "udp", "db.localhost.", dns.TypeA); len(r.Answer) != 1 || !r.Authoritative {
		t.Errorf("db.localhost A: %v", r)
	}
	if r := rs.ask(t, "udp", "x.onion.", dns.TypeA); r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 {
		t.Errorf("x.onion A: %v", r)
	}
	// route_info says where each zone goes.
	if n := testutil.CollectAndCount(rs.reg, "dot_sidecar_route_info"); n != 1+1+2+91 {
		t.Errorf("%d route_info series, want the default, corp.example, the cluster's two zones and 91 reverse zones", n)
	}
}

// TestRoutingClusterResolverDown: with the cluster's resolver down, its
// names get SERVFAIL with an Extended DNS Error within QUERY_TIMEOUT, never
// an answer from the public upstream, and public names are unaffected.
func TestRoutingClusterResolverDown(t *testing.T) {
	rs := startRoutedSidecar(t)
	rs.kubeDNS.Behavior.Drop.Store(true) // black hole: the slowest failure
	for i := range 5 {
		name := fmt.Sprintf("svc-%d.team-a.svc.cluster.local.", i)
		start := time.Now()
		r := rs.ask(t, "udp", name, dns.TypeA)
		took := time.Since(start)
		if r.Rcode != dns.RcodeServerFailure || ede(r) == nil {
			t.Errorf("%s with the cluster's resolver down: %s, EDE %v; want SERVFAIL with EDE", name, dns.RcodeToString[r.Rcode], ede(r))
		}
		if took > time.Second+500*time.Millisecond {
			t.Errorf("%s: SERVFAIL after %v, past QUERY_TIMEOUT (1s)", name, took)
		}
		if pr := rs.ask(t, "udp", "example.com.", dns.TypeA); pr.Rcode != dns.RcodeSuccess || len(pr.Answer) != 1 {
			t.Errorf("public name while the cluster's resolver is down: %v", pr)
		}
	}
	for _, n := range rs.dot.get() {
		if strings.HasSuffix(n, "cluster.local.") {
			t.Errorf("%s reached the public upstream", n)
		}
	}
	// Stopped outright (port unreachable): marked down fast, then a fast
	// SERVFAIL.
	rs.kubeDNS.Stop()
	for i := range 5 {
		r := rs.ask(t, "tcp", fmt.Sprintf("x%d.cluster.local.", i), dns.TypeA)
		if r.Rcode != dns.RcodeServerFailure || ede(r) == nil {
			t.Errorf("stopped resolver: %v", r)
		}
	}
	// Back: the first query brings the route back.
	rs.kubeDNS.Behavior.Drop.Store(false)
	if err := rs.kubeDNS.Start(); err != nil {
		t.Fatal(err)
	}
	if r := rs.ask(t, "udp", "kubernetes.default.svc.cluster.local.", dns.TypeA); r.Rcode != dns.RcodeSuccess {
		t.Errorf("after the cluster's resolver returned: %v", r)
	}
}

func ede(r *dns.Msg) *dns.EDNS0_EDE {
	if opt := r.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok {
				return e
			}
		}
	}
	return nil
}

// TestRouteTrust: a route's tls:// entry is verified against its own ;ca=
// file, or the system roots, with its own pins only: TLS_CA_FILE and
// TLS_PINS are UPSTREAMS' alone, so a route neither inherits nor breaks on
// them. Its ;ca= file is watched like TLS_CA_FILE; one that cannot be read
// is a bad ROUTES value.
func TestRouteTrust(t *testing.T) {
	corp := dnstest.New(t, dnstest.Options{ServerName: "ns.corp.example"})
	public := dnstest.New(t, dnstest.Options{})
	dir := t.TempDir()
	corpCA := filepath.Join(dir, "corp-ca.pem")
	bothCAs := filepath.Join(dir, "both.pem")
	for p, b := range map[string][]byte{corpCA: corp.CAPEM, bothCAs: append(append([]byte(nil), public.CAPEM...), corp.CAPEM...)} {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	load := func(routes string) (*config.Config, *routing, error) {
		cfg, err := config.Load(nil, []string{
			"UPSTREAMS=tls://" + public.Addr.String() + "#" + public.ServerName,
			"TLS_CA_FILE=" + bothCAs,
			"TLS_PINS=" + public.CAPin, // would reject corp's chain
			"CLUSTER_DNS=off",
			"ROUTES=" + routes,
			// Handshakes, and the first one against the system roots,
			// which loads them, can take seconds on a busy machine under
			// -race: the timeouts only bound a hang.
			"DIAL_TIMEOUT=10s",
			"QUERY_TIMEOUT=15s",
		})
		if err != nil {
			t.Fatal(err)
		}
		trust, err := loadTrust(cfg)
		if err != nil {
			t.Fatal(err)
		}
		rt, err := newRouting(cfg, planRoutes(cfg), trust, slog.New(slog.DiscardHandler), prometheus.NewRegistry())
		if err == nil {
			t.Cleanup(func() { _ = rt.router.Close() })
		}
		return cfg, rt, err
	}
	ask := func(rt *routing, name string) error {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		b, _ := m.Pack()
		q, err := dnswire.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		_, err = rt.router.Exchange(ctx, q)
		return err
	}

	_, rt, err := load("corp.example=tls://" + corp.Addr.String() + "#" + corp.ServerName + ";ca=" + corpCA +
		" other.example=tls://" + corp.Addr.String() + "#" + corp.ServerName)
	if err != nil {
		t.Fatal(err)
	}
	if err := ask(rt, "wiki.corp.example."); err != nil {
		t.Errorf("route with its own CA, beside TLS_PINS that would reject it: %v", err)
	}
	if err := ask(rt, "example.com."); err != nil {
		t.Errorf("UPSTREAMS: %v", err)
	}
	// Without ;ca=, the system roots: TLS_CA_FILE, which holds corp's CA,
	// does not apply.
	if err := ask(rt, "x.other.example."); !errors.Is(err, upstream.ErrTLS) {
		t.Errorf("route without ;ca= to a private CA: %v, want a TLS failure", err)
	}
	r, err := upstream.NewTrustReloader(upstream.ReloaderOptions{Trusts: rt.trusts, Interval: time.Second,
		Logger: slog.New(slog.DiscardHandler), Metrics: upstream.NewReloadMetrics(prometheus.NewRegistry())})
	if err != nil {
		t.Fatal(err)
	}
	if files := r.Files(); !slices.Contains(files, corpCA) || !slices.Contains(files, bothCAs) {
		t.Errorf("watched files %q, want TLS_CA_FILE and the route's ;ca= file", files)
	}

	missing := filepath.Join(dir, "missing.pem")
	routes := "corp.example=tls://" + corp.Addr.String() + "#" + corp.ServerName + ";ca=" + missing
	_, _, err = load(routes)
	want := fmt.Sprintf("invalid ROUTES %q: %s#%s: ;ca=%s: open %s: no such file or directory", routes, corp.Addr, corp.ServerName, missing, missing)
	if err == nil || err.Error() != want || !errors.Is(err, config.ErrInvalid) {
		t.Errorf("error\n got: %v\nwant: %s", err, want)
	}
}

// TestRoutingDoH: https:// entries become DNS-over-HTTPS upstreams in
// UPSTREAMS (verified against TLS_CA_FILE) and in routes (against their own
// ;ca=), with the path, method and server name of the entry, beside tls://
// ones in the same list.
func TestRoutingDoH(t *testing.T) {
	public := dnstest.New(t, dnstest.Options{DoH: true})
	dot := dnstest.New(t, dnstest.Options{})
	corp := dnstest.New(t, dnstest.Options{DoH: true, ServerName: "doh.corp.example", Path: "/corp/resolve"})
	dir := t.TempDir()
	bothCAs, corpCA := filepath.Join(dir, "both.pem"), filepath.Join(dir, "corp.pem")
	for p, b := range map[string][]byte{bothCAs: append(append([]byte(nil), public.CAPEM...), dot.CAPEM...), corpCA: corp.CAPEM} {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dohEntry := "https://" + public.Addr.String() + "/dns-query#" + public.ServerName
	cfg, err := config.Load(nil, []string{
		"UPSTREAMS=" + dohEntry + ",tls://" + dot.Addr.String() + "#" + dot.ServerName,
		"TLS_CA_FILE=" + bothCAs,
		"CLUSTER_DNS=off",
		"ROUTES=corp.example=https://" + corp.Addr.String() + corp.Path + "#" + corp.ServerName + ";ca=" + corpCA + ";method=get",
		"QUERY_TIMEOUT=2s",
	})
	if err != nil {
		t.Fatal(err)
	}
	trust, err := loadTrust(cfg)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	rt, err := newRouting(cfg, planRoutes(cfg), trust, slog.New(slog.DiscardHandler), reg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.router.Close() })
	for _, name := range []string{"example.com.", "wiki.corp.example."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		b, _ := m.Pack()
		q, err := dnswire.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = rt.router.Exchange(ctx, q)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if public.Queries() != 1 || corp.Queries() != 1 || dot.Queries() != 0 {
		t.Errorf("queries: UPSTREAMS' DoH %d, route's DoH %d, DoT %d; want 1, 1, 0 (the first upstream answers)",
			public.Queries(), corp.Queries(), dot.Queries())
	}
	if got := public.Methods(); !slices.Equal(got, []string{"POST"}) {
		t.Errorf("UPSTREAMS' DoH got %v, want POST", got)
	}
	if got := corp.Methods(); !slices.Equal(got, []string{"GET"}) {
		t.Errorf("the route's DoH got %v, want GET (;method=get)", got)
	}
	if got := corp.SNIs(); !slices.Equal(got, []string{"doh.corp.example"}) {
		t.Errorf("the route's DoH saw SNI %v", got)
	}
	// The metrics name the DoH upstream as the entry does.
	name := "https://" + public.Addr.String() + "/dns-query#" + public.ServerName
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	opened := -1.0
	for _, f := range families {
		if f.GetName() != "dot_sidecar_upstream_connections_opened_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["route"] == upstream.DefaultRoute && labels["upstream"] == name {
				opened = m.GetCounter().GetValue()
			}
		}
	}
	if opened != 1 {
		t.Errorf("connections_opened_total{route=default, upstream=%s} = %v, want 1", name, opened)
	}
}
