package upstream

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// clusterResolver is a resolver without Internet access, as kube-dns or an
// internal resolver may be: it answers its own zone (cluster.local) at once
// and never answers what it would have to recurse for ("NS ." among them).
type clusterResolver struct {
	srv    *dnstest.PlainServer
	probes atomic.Int64 // questions for the apex SOA
}

func newClusterResolver(t *testing.T) *clusterResolver {
	r := &clusterResolver{}
	r.srv = dnstest.NewPlain(t, dnstest.PlainOptions{Handler: func(q *dns.Msg) *dns.Msg {
		name := q.Question[0].Name
		if !dns.IsSubDomain("cluster.local.", name) {
			return nil // would recurse, and cannot
		}
		if name == "cluster.local." && q.Question[0].Qtype == dns.TypeSOA {
			r.probes.Add(1)
		}
		return dnstest.DefaultHandler(q)
	}})
	return r
}

// clusterGroup is a Group of one dns:// upstream toward r, with probe p.
func clusterGroup(t *testing.T, r *clusterResolver, p Probe) (*Group, *Metrics) {
	t.Helper()
	m := NewMetrics(prometheus.NewRegistry()).ForRoute("cluster.local")
	u := newTestPlain(t, r.srv, false, func(o *PlainOptions) { o.Metrics = m })
	g, err := NewGroup(testGroupOptions(GroupOptions{
		Upstreams: []Upstream{u}, Probe: p, Logger: testLogger(), Metrics: m,
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g, m
}

// downUntilMarked stops r and sends queries until the Group marks it down.
func downUntilMarked(t *testing.T, g *Group, r *clusterResolver) {
	t.Helper()
	r.srv.Stop()
	eventually(t, 10*time.Second, "the upstream to be marked down", func() bool {
		_, _ = g.Exchange(ctxTimeout(t, time.Second), packQuery(t, "a.cluster.local.", dns.TypeA))
		return !g.Healthy()
	})
}

// A resolver that cannot answer "NS ." (no Internet) is back with the first
// real query it answers after it returns, not when the probe it never
// answers would succeed: while the group is down, queries go through as
// probes, one at a time.
func TestGroupTrialQueriesBringBackAResolverThatCannotAnswerTheProbe(t *testing.T) {
	r := newClusterResolver(t)
	g, m := clusterGroup(t, r, Probe{}) // the default, "NS ."
	if _, err := g.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, "a.cluster.local.", dns.TypeA)); err != nil {
		t.Fatal(err)
	}
	downUntilMarked(t, g, r)

	if err := r.srv.Start(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	// The background probe alone would never bring it back: its "NS ." goes
	// unanswered. One query does.
	q := packQuery(t, "kubernetes.default.svc.cluster.local.", dns.TypeA)
	ans, err := g.Exchange(ctxTimeout(t, answerTimeout), q)
	if err != nil {
		t.Fatalf("first query after the resolver returned: %v", err)
	}
	if err := checkAnswer(ans, q); err != nil {
		t.Fatal(err)
	}
	t.Logf("back %v after the resolver returned", time.Since(back).Round(time.Millisecond))
	if !g.Healthy() || counterValue(m.HealthState.WithLabelValues(g.members[0].name)) != 1 {
		t.Error("group not healthy after its upstream answered")
	}
}

// While every upstream is down, at most one query per upstream is in flight
// as a trial; the others get ErrAllDown at once.
func TestGroupTrialOneInFlightPerUpstream(t *testing.T) {
	r := newClusterResolver(t)
	g, _ := clusterGroup(t, r, Probe{})
	downUntilMarked(t, g, r)
	// Back, but silent for this name: the trial holds its slot until its
	// deadline.
	if err := r.srv.Start(); err != nil {
		t.Fatal(err)
	}
	n := len(r.srv.Queries())
	ctx := newExpiringCtx()
	trialDone := make(chan error, 1)
	go func() {
		_, err := g.Exchange(ctx, packQuery(t, "example.com.", dns.TypeA))
		trialDone <- err
	}()
	eventually(t, answerTimeout, "the trial query to reach the resolver", func() bool {
		for _, q := range r.srv.Queries()[n:] {
			if q.Name == "example.com." {
				return true
			}
		}
		return false
	})
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			start := time.Now()
			_, err := g.Exchange(ctxTimeout(t, answerTimeout), packQuery(t, fmt.Sprintf("q%d.cluster.local.", i), dns.TypeA))
			if !errors.Is(err, ErrAllDown) {
				t.Errorf("query %d beside the trial: %v, want ErrAllDown", i, err)
			}
			if took := time.Since(start); took > 500*time.Millisecond {
				t.Errorf("query %d waited %v for its ErrAllDown", i, took)
			}
		})
	}
	wg.Wait()
	for _, q := range r.srv.Queries()[n:] {
		if q.Name != "example.com." && q.Name != "." {
			t.Errorf("%s reached the resolver beside the trial", q.Name)
		}
	}
	ctx.expire()
	if err := <-trialDone; !errors.Is(err, ErrAllDown) {
		t.Errorf("trial that timed out: %v, want ErrAllDown with its cause", err)
	}
}

// A probe the resolver answers from its own data brings it back with no
// query at all; the default "NS ." never would.
func TestGroupProbeName(t *testing.T) {
	r := newClusterResolver(t)
	g, m := clusterGroup(t, r, Probe{Name: "cluster.local.", Type: dnswire.TypeSOA})
	downUntilMarked(t, g, r)
	if err := r.srv.Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the SOA probe to bring the upstream back", g.Healthy)
	if r.probes.Load() == 0 {
		t.Error("no SOA probe reached the resolver")
	}
	if counterValue(m.HealthState.WithLabelValues(g.members[0].name)) != 1 {
		t.Error("health_state not back to 1")
	}
}

// Probes gives each upstream its own probe; a zero entry takes Probe.
func TestGroupProbesPerUpstream(t *testing.T) {
	srv := dnstest.NewPlain(t, dnstest.PlainOptions{})
	srv2 := dnstest.NewPlain(t, dnstest.PlainOptions{IP: netip.MustParseAddr("127.0.0.2")})
	m := NewMetrics(prometheus.NewRegistry())
	a := newTestPlain(t, srv, false, func(o *PlainOptions) { o.Metrics = m })
	b := newTestPlain(t, srv2, false, func(o *PlainOptions) { o.Metrics = m })
	g, err := NewGroup(testGroupOptions(GroupOptions{
		Upstreams: []Upstream{a, b},
		Probe:     Probe{Name: "default.example.", Type: dnswire.TypeSOA},
		Probes:    []Probe{{Name: "own.example.", Type: dnswire.TypeA}, {}},
		Logger:    testLogger(), Metrics: m,
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if got := g.members[0].probe; got != (Probe{"own.example.", dnswire.TypeA}) {
		t.Errorf("upstream 0 probes %v", got)
	}
	if got := g.members[1].probe; got != (Probe{"default.example.", dnswire.TypeSOA}) {
		t.Errorf("upstream 1 probes %v", got)
	}
	for name, opts := range map[string]GroupOptions{
		"probes not one per upstream": {Upstreams: []Upstream{a, b}, Probes: []Probe{{}}},
		"probe name not a name":       {Upstreams: []Upstream{a}, Probe: Probe{Name: "a..b", Type: 1}},
	} {
		opts.Logger, opts.Metrics = testLogger(), m
		if _, err := NewGroup(testGroupOptions(opts)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
