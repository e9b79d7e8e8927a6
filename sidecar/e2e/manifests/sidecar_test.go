package manifests

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/admin"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/cache"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/server"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// adminStatus starts the sidecar's real admin listener on loopback, marks it
// started (DNS listeners bound) and returns a function that tells the HTTP
// status of a path, as the kubelet's probes and Prometheus would get it.
func adminStatus(t *testing.T) func(path string) int {
	t.Helper()
	reg := prometheus.NewRegistry()
	a, err := admin.New(admin.Options{
		Addr:       "127.0.0.1:0",
		Registerer: reg,
		Gatherer:   reg,
		Logger:     slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := a.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	a.SetStarted()
	client := &http.Client{Timeout: 5 * time.Second}
	return func(path string) int {
		resp, err := client.Get("http://" + a.Addr() + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
}

// family is one exported metric family: its type, and the label names of its
// series with the values they carry from start-up (bounded labels such as
// rcode and proto are initialised for every value the code names).
type family struct {
	Type   dto.MetricType
	Labels map[string]map[string]bool
}

// exportedMetrics returns every metric family the sidecar exports on
// /metrics, gathered from a registry filled the way the sidecar fills its
// own: the admin package's collectors with the Go and process collectors,
// the upstream package's collectors with the series of an upstream of the
// default route and one of a cluster route initialised, the router's, and
// the server package's collectors. The dashboard is checked against this
// one function: a renamed metric or label fails the dashboard test.
func exportedMetrics(t *testing.T) map[string]family {
	t.Helper()
	reg := prometheus.NewRegistry()
	log := slog.New(slog.DiscardHandler)
	if err := admin.RegisterRuntimeCollectors(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.New(admin.Options{Registerer: reg, Gatherer: reg, Logger: log}); err != nil {
		t.Fatal(err)
	}
	up := upstream.NewMetrics(reg)
	up.Init("192.0.2.1:853#dns.example")
	up.InitKeepalive("192.0.2.1:853#dns.example")
	up.ForRoute("cluster").Init("dns://10.96.0.10:53")
	up.Init("https://192.0.2.1:443/dns-query#dns.example")
	up.InitHTTP("https://192.0.2.1:443/dns-query#dns.example")
	rt, err := router.New(router.Options{Default: idleUpstream{}, Registerer: reg, Routes: []router.RouteOptions{
		{Name: "cluster", Zones: []string{"cluster.local"}, Upstream: idleUpstream{}, Cluster: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	// cache.New needs every option; their values play no part here.
	if _, err := cache.New(cache.Options{Upstream: rt, Size: 1, MaxTTL: time.Hour, MaxNegativeTTL: time.Hour,
		QueryTimeout: time.Second, Logger: log, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	// server.New needs every option; their values play no part here.
	if _, err := server.New(server.Options{BindAddrs: []netip.Addr{netip.IPv6Loopback()}, Proto: "both",
		QueryTimeout: time.Second, UDPMaxSize: 512, TCPIdleTimeout: time.Second, TCPMaxConns: 1, TCPMaxInFlight: 1,
		TCPMaxUnread: 512, MaxInFlight: 1, Upstream: idleUpstream{}, Logger: log, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	fams := make(map[string]family, len(mfs))
	for _, mf := range mfs {
		f := family{Type: mf.GetType(), Labels: make(map[string]map[string]bool)}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if f.Labels[l.GetName()] == nil {
					f.Labels[l.GetName()] = make(map[string]bool)
				}
				f.Labels[l.GetName()][l.GetValue()] = true
			}
		}
		fams[mf.GetName()] = f
	}
	return fams
}

// idleUpstream satisfies upstream.Upstream for server.New, which only
// registers metrics here: no query is ever sent.
type idleUpstream struct{}

func (idleUpstream) Exchange(context.Context, dnswire.Msg) (dnswire.Msg, error) {
	return dnswire.Msg{}, upstream.ErrClosed
}
func (idleUpstream) Name() string { return "idle" }
func (idleUpstream) Close() error { return nil }

var _ upstream.Upstream = idleUpstream{}

// seriesNames expands families into the series names PromQL can select,
// each with its labels and their known values: histograms and summaries
// have _bucket (histograms), _sum and _count series.
func seriesNames(fams map[string]family) map[string]map[string]map[string]bool {
	names := make(map[string]map[string]map[string]bool)
	for name, f := range fams {
		labels := func(extra ...string) map[string]map[string]bool {
			m := make(map[string]map[string]bool, len(f.Labels)+len(extra))
			for l, vs := range f.Labels {
				m[l] = vs
			}
			for _, l := range extra {
				m[l] = nil // any value
			}
			return m
		}
		switch f.Type {
		case dto.MetricType_HISTOGRAM:
			names[name+"_bucket"] = labels("le")
			names[name+"_sum"] = labels()
			names[name+"_count"] = labels()
		case dto.MetricType_SUMMARY:
			names[name] = labels("quantile")
			names[name+"_sum"] = labels()
			names[name+"_count"] = labels()
		default:
			names[name] = labels()
		}
	}
	return names
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
