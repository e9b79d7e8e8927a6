package router

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

var _ upstream.Upstream = (*recorder)(nil)

// recorder is an upstream that answers NOERROR and remembers the names it
// was asked.
type recorder struct {
	name   string
	mu     sync.Mutex
	asked  []string
	closed bool
}

func (u *recorder) Exchange(_ context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	u.mu.Lock()
	u.asked = append(u.asked, strings.ToLower(q.QNameText()))
	u.mu.Unlock()
	return dnswire.Parse(dnswire.AppendReply(nil, &q, dnswire.Reply{}))
}
func (u *recorder) Name() string { return u.name }
func (u *recorder) Close() error {
	u.closed = true
	return nil
}

func (u *recorder) names() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.asked...)
}

func query(t testing.TB, name string, qtype uint16, edns bool) dnswire.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	if edns {
		m.SetEdns0(1232, true)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	q, err := dnswire.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// testRouter routes like a pod whose operator added two routes: the
// cluster route (auto) with a node's domain, and a corporate zone over TLS.
func testRouter(t testing.TB, localReverse bool, routes ...RouteOptions) (*Router, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	r, err := New(Options{
		Default:      &recorder{name: "public"},
		Routes:       routes,
		LocalReverse: localReverse,
		UDPSize:      1232,
		Registerer:   reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r, reg
}

func TestRouteMatching(t *testing.T) {
	corp := RouteOptions{Zones: []string{"Corp.Example."}, Upstream: &recorder{name: "corp"}, Encrypted: true}
	deep := RouteOptions{Name: "deep", Zones: []string{"eu.corp.example"}, Upstream: &recorder{name: "deep"}, Encrypted: true}
	cluster := RouteOptions{Name: "cluster.local", Zones: []string{"cluster.local", "ec2.internal", "10.in-addr.arpa"},
		Upstream: &recorder{name: "kube-dns"}, Cluster: true}
	homeRoute := RouteOptions{Zones: []string{"home.arpa"}, Upstream: &recorder{name: "router"}}
	arpa := RouteOptions{Zones: []string{"in-addr.arpa"}, Upstream: &recorder{name: "arpa"}}
	r, _ := testRouter(t, true, corp, deep, cluster, homeRoute, arpa)
	tests := []struct {
		name      string
		wantRoute string
		wantZone  string
	}{
		{"www.example.com.", "default", "."},
		{".", "default", "."},
		{"corp.example.", "corp.example", "corp.example."},
		{"WWW.CORP.EXAMPLE.", "corp.example", "corp.example."},
		{"a.b.c.corp.example.", "corp.example", "corp.example."},
		{"xcorp.example.", "default", "."},                    // label boundary
		{"corp.example.com.", "default", "."},                 // a suffix is not a prefix
		{"mail.eu.corp.example.", "deep", "eu.corp.example."}, // longest wins
		{"eu.corp.example.", "deep", "eu.corp.example."},
		{"xeu.corp.example.", "corp.example", "corp.example."},
		{"kubernetes.default.svc.cluster.local.", "cluster.local", "cluster.local."},
		{"api.example.com.team-a.svc.cluster.local.", "cluster.local", "cluster.local."},
		{"ip-10-0-0-1.ec2.internal.", "cluster.local", "ec2.internal."},
		{"1.0.96.10.in-addr.arpa.", "cluster.local", "10.in-addr.arpa."},
		// Special-use names: below every route, never shadowing one.
		{"x.local.", "local", "local."},
		{"local.", "local", "local."},
		{"localhost.", "local", "localhost."},
		{"db.LOCALHOST.", "local", "localhost."},
		{"x.invalid.", "local", "invalid."},
		{"abc.onion.", "local", "onion."},
		{"printer.home.arpa.", "home.arpa", "home.arpa."},              // a route for the zone wins
		{"1.1.168.192.in-addr.arpa.", "in-addr.arpa", "in-addr.arpa."}, // so does a route above it
		{"1.0.0.127.in-addr.arpa.", "in-addr.arpa", "in-addr.arpa."},
		{"1.0.0.8.in-addr.arpa.", "in-addr.arpa", "in-addr.arpa."},
		{"b.a.9.8.7.6.5.4.3.2.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", "local", "d.f.ip6.arpa."},
		{"4.3.2.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.", "default", "."},
		{"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.", "local",
			"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa."},
	}
	for _, tt := range tests {
		q := query(t, tt.name, dns.TypeA, false)
		rt := r.Route(&q)
		if rt.Name != tt.wantRoute || rt.Zone != tt.wantZone {
			t.Errorf("%s: route %q zone %q, want %q zone %q", tt.name, rt.Name, rt.Zone, tt.wantRoute, tt.wantZone)
		}
	}
}

// Without routes, the special zones answer locally, and the private reverse
// zones too when asked to; a route's flags travel with its zones.
func TestRouteFlags(t *testing.T) {
	cluster := RouteOptions{Name: "cluster.local", Zones: []string{"cluster.local."}, Upstream: &recorder{name: "kube-dns"}, Cluster: true}
	corp := RouteOptions{Zones: []string{"corp.example"}, Upstream: &recorder{name: "corp"}, Encrypted: true}
	for _, localReverse := range []bool{false, true} {
		r, _ := testRouter(t, localReverse, cluster, corp)
		for _, tt := range []struct {
			name                          string
			encrypted, clusterZone, local bool
		}{
			{"example.com.", true, false, false},
			{"a.cluster.local.", false, true, false},
			{"a.corp.example.", true, false, false},
			{"a.local.", false, false, true},
			// Locally, or by the default route.
			{"4.3.2.10.in-addr.arpa.", !localReverse, false, localReverse},
		} {
			q := query(t, tt.name, dns.TypePTR, false)
			rt := r.Route(&q)
			if rt.Encrypted != tt.encrypted || rt.Cluster != tt.clusterZone || rt.Local != tt.local || (rt.Upstream == nil) != tt.local {
				t.Errorf("localReverse=%v %s: %+v", localReverse, tt.name, rt)
			}
		}
	}
}

// Exchange sends each name to its route's upstream, and answers local zones
// without any.
func TestExchangeDispatch(t *testing.T) {
	def := &recorder{name: "public"}
	kube := &recorder{name: "kube-dns"}
	reg := prometheus.NewRegistry()
	r, err := New(Options{Default: def, UDPSize: 1232, Registerer: reg, Routes: []RouteOptions{
		{Name: "cluster.local", Zones: []string{"cluster.local", "ec2.internal"}, Upstream: kube, Cluster: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"kubernetes.default.svc.cluster.local.", "ip-10-0-0-1.ec2.internal.", "example.com.",
		"localhost.", "x.local.", "1.0.0.10.in-addr.arpa."} {
		q := query(t, name, dns.TypeA, false)
		ans, err := r.Exchange(context.Background(), q)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !ans.Valid() || !ans.Answers(&q) || ans.ID != q.ID {
			t.Errorf("%s: answer does not answer the query", name)
		}
	}
	if got := strings.Join(kube.names(), " "); got != "kubernetes.default.svc.cluster.local. ip-10-0-0-1.ec2.internal." {
		t.Errorf("cluster resolver asked %q", got)
	}
	if got := strings.Join(def.names(), " "); got != "example.com. 1.0.0.10.in-addr.arpa." {
		t.Errorf("default upstreams asked %q", got)
	}
	if err := r.Close(); err != nil || !def.closed || !kube.closed {
		t.Errorf("Close: %v; default closed %v, route closed %v", err, def.closed, kube.closed)
	}
}

func TestNewRefuses(t *testing.T) {
	u := &recorder{}
	for name, opts := range map[string]Options{
		"no default":       {Registerer: prometheus.NewRegistry()},
		"no registerer":    {Default: u},
		"root as a route":  {Default: u, Routes: []RouteOptions{{Zones: []string{"."}, Upstream: u}}},
		"zone twice":       {Default: u, Routes: []RouteOptions{{Zones: []string{"a.example"}, Upstream: u}, {Zones: []string{"A.Example."}, Upstream: u}}},
		"route without up": {Default: u, Routes: []RouteOptions{{Zones: []string{"a.example"}}}},
		"not a name":       {Default: u, Routes: []RouteOptions{{Zones: []string{"a..example"}, Upstream: u}}},
	} {
		if opts.Registerer == nil && name != "no registerer" {
			opts.Registerer = prometheus.NewRegistry()
		}
		if _, err := New(opts); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// dot_sidecar_route_info has a series for each forwarded zone.
func TestRouteInfo(t *testing.T) {
	_, reg := testRouter(t, false,
		RouteOptions{Name: "cluster.local", Zones: []string{"cluster.local", "ec2.internal"}, Upstream: &recorder{}, Cluster: true},
		RouteOptions{Zones: []string{"corp.example"}, Upstream: &recorder{}, Encrypted: true})
	want := `
# HELP dot_sidecar_route_info 1 for each zone with upstreams of its own (the default route's zone is .), with the route's name and whether it is encrypted.
# TYPE dot_sidecar_route_info gauge
dot_sidecar_route_info{encrypted="false",route="cluster.local",zone="cluster.local."} 1
dot_sidecar_route_info{encrypted="false",route="cluster.local",zone="ec2.internal."} 1
dot_sidecar_route_info{encrypted="true",route="corp.example",zone="corp.example."} 1
dot_sidecar_route_info{encrypted="true",route="default",zone="."} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "dot_sidecar_route_info"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}
}

func TestPrivateReverseZones(t *testing.T) {
	zones := PrivateReverseZones()
	if len(zones) != 2+16+2+64+1+2+4 {
		t.Errorf("%d zones", len(zones))
	}
	seen := map[string]bool{}
	for _, z := range zones {
		if seen[z] {
			t.Errorf("%s twice", z)
		}
		seen[z] = true
		if _, _, err := zoneKey(z); err != nil {
			t.Error(err)
		}
	}
	for _, z := range []string{"16.172.in-addr.arpa.", "31.172.in-addr.arpa.", "64.100.in-addr.arpa.", "127.100.in-addr.arpa.", "b.e.f.ip6.arpa."} {
		if !seen[z] {
			t.Errorf("%s missing", z)
		}
	}
	for _, z := range []string{"15.172.in-addr.arpa.", "32.172.in-addr.arpa.", "63.100.in-addr.arpa.", "128.100.in-addr.arpa.", "c.e.f.ip6.arpa."} {
		if seen[z] {
			t.Errorf("%s is not private", z)
		}
	}
}

// BenchmarkRoute measures the zone lookup every relayed query makes, for a
// public name (every suffix tried, down to the root) and a cluster name of
// eight labels, against a table of about a hundred zones (the special-use
// and private reverse zones, and a few routes). It must stay well under a
// microsecond, and allocate nothing.
func BenchmarkRoute(b *testing.B) {
	r, _ := testRouter(b, true,
		RouteOptions{Name: "cluster.local", Zones: []string{"cluster.local", "ec2.internal"}, Upstream: &recorder{}, Cluster: true},
		RouteOptions{Zones: []string{"corp.example"}, Upstream: &recorder{}, Encrypted: true})
	for _, tt := range []struct{ bench, name, want string }{
		{"public", "www.Example.com.", "default"},
		{"cluster", "api.example.com.team-a.svc.cluster.local.", "cluster.local"},
	} {
		q := query(b, tt.name, dns.TypeA, false)
		b.Run(tt.bench, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if r.Route(&q).Name != tt.want {
					b.Fatal("wrong route")
				}
			}
		})
	}
}

// TestRouteDoesNotAllocate keeps BenchmarkRoute's promise in the test run.
func TestRouteDoesNotAllocate(t *testing.T) {
	r, _ := testRouter(t, true, RouteOptions{Zones: []string{"cluster.local"}, Upstream: &recorder{}})
	q := query(t, "api.example.com.team-a.svc.cluster.local.", dns.TypeA, false)
	if n := testing.AllocsPerRun(100, func() { r.Route(&q) }); n != 0 {
		t.Errorf("Route allocates %v times per call", n)
	}
}

// FuzzRoute: any name a query can carry finds a route, the one whose zone
// is its longest suffix on label boundaries.
func FuzzRoute(f *testing.F) {
	r, _ := testRouter(f, true, RouteOptions{Zones: []string{"cluster.local", "ec2.internal"}, Upstream: &recorder{}})
	for _, s := range []string{"a.cluster.local.", "CLUSTER.LOCAL.", ".", "x.local.", "1.0.0.10.in-addr.arpa.", "a\\.b.local."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeA)
		b, err := m.Pack()
		if err != nil {
			return
		}
		q, err := dnswire.Parse(b)
		if err != nil {
			return
		}
		rt := r.Route(&q)
		fq := strings.ToLower(q.QNameText())
		if rt.Zone != "." && fq != rt.Zone && !strings.HasSuffix(fq, "."+rt.Zone) {
			t.Fatalf("%q routed to zone %q", fq, rt.Zone)
		}
	})
}
