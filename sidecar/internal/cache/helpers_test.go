package cache

import (
	"cmp"
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

func TestMain(m *testing.M) {
	testkit.Main(m, func() error { return goleak.Find() })
}

// ioTimeout bounds every wait of the tests, so that a cache that never
// answers fails a test instead of hanging it.
const ioTimeout = 5 * time.Second

// fakeClock is moved by hand: a TTL's countdown is tested by moving it,
// not by waiting.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) NowNano() int64          { return c.ns.Load() }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// scripted is an upstream whose answers a test writes with handler (nil:
// the transport failed), returned parsed and matched to the query as the
// real clients return them. It counts the queries it gets; with a gate,
// each waits for the gate to close first.
type scripted struct {
	name    string
	handler func(q *dns.Msg) *dns.Msg
	queries atomic.Int64
	gate    chan struct{}
}

func (u *scripted) Exchange(ctx context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	u.queries.Add(1)
	if u.gate != nil {
		select {
		case <-u.gate:
		case <-ctx.Done():
			return dnswire.Msg{}, ctx.Err()
		}
	}
	m := new(dns.Msg)
	if err := m.Unpack(q.Wire()); err != nil {
		return dnswire.Msg{}, upstream.ErrBadQuery
	}
	r := u.handler(m)
	if r == nil {
		return dnswire.Msg{}, upstream.ErrUnreachable
	}
	b, err := r.Pack()
	if err != nil {
		return dnswire.Msg{}, err
	}
	return dnswire.Parse(b)
}

func (u *scripted) Name() string { return cmp.Or(u.name, "scripted") }
func (u *scripted) Close() error { return nil }

// reply builds the answer to q with the records rrs (in the answer
// section), and the OPT record of q's EDNS, as a resolver answers.
func replyTo(q *dns.Msg, rcode int, rrs ...string) *dns.Msg {
	r := new(dns.Msg)
	r.SetRcode(q, rcode)
	r.RecursionAvailable = true
	r.Compress = true // owners point at the question, as resolvers write them
	for _, s := range rrs {
		rr, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		if rr.Header().Rrtype == dns.TypeSOA {
			r.Ns = append(r.Ns, rr)
		} else {
			r.Answer = append(r.Answer, rr)
		}
	}
	if opt := q.IsEdns0(); opt != nil {
		r.SetEdns0(1232, opt.Do())
	}
	return r
}

// answerA answers every query with one A record of the question's name
// and the given TTL.
func answerA(ttl int) func(q *dns.Msg) *dns.Msg {
	return func(q *dns.Msg) *dns.Msg {
		return replyTo(q, dns.RcodeSuccess, q.Question[0].Name+" "+strconv.Itoa(ttl)+" IN A 192.0.2.1")
	}
}

// harness is a Cache in front of a router, as the sidecar builds them in
// a pod: pub for UPSTREAMS and for a plaintext route (lan.example, neither
// Encrypted nor Cluster), cluster for the cluster route (cluster.local,
// Cluster true), both scripted unless the test gives its own.
type harness struct {
	*Cache
	clock   *fakeClock
	pub     *scripted
	cluster *scripted
	reg     *prometheus.Registry
}

// newHarness fills the zero fields of opts with the settings' defaults,
// and a short stale client timeout.
func newHarness(t testing.TB, opts Options) *harness {
	t.Helper()
	h := &harness{clock: newFakeClock(), reg: prometheus.NewRegistry(),
		pub: &scripted{name: "pub", handler: answerA(300)}, cluster: &scripted{name: "cluster", handler: answerA(5)}}
	if opts.Upstream == nil {
		r, err := router.New(router.Options{
			Default: h.pub,
			Routes: []router.RouteOptions{
				{Name: "cluster", Zones: []string{"cluster.local"}, Upstream: h.cluster, Cluster: true},
				{Name: "lan", Zones: []string{"lan.example"}, Upstream: h.pub},
			},
			UDPSize:    1232,
			Registerer: prometheus.NewRegistry(),
		})
		if err != nil {
			t.Fatal(err)
		}
		opts.Upstream = r
	}
	opts.Size = cmp.Or(opts.Size, 10000)
	opts.MaxTTL = cmp.Or(opts.MaxTTL, time.Hour)
	opts.MaxNegativeTTL = cmp.Or(opts.MaxNegativeTTL, 30*time.Minute)
	opts.StaleClientTimeout = cmp.Or(opts.StaleClientTimeout, 200*time.Millisecond)
	opts.PrefetchWindow = cmp.Or(opts.PrefetchWindow, time.Minute)
	opts.PrefetchPercent = cmp.Or(opts.PrefetchPercent, 10)
	opts.QueryTimeout = cmp.Or(opts.QueryTimeout, 2*time.Second)
	opts.UDPSize = cmp.Or(opts.UDPSize, 1232)
	opts.Logger = cmp.Or(opts.Logger, slog.New(slog.DiscardHandler))
	if opts.Registerer == nil {
		opts.Registerer = h.reg
	}
	if opts.Clock == nil {
		opts.Clock = h.clock
	}
	c, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	h.Cache = c
	return h
}

// query is a parsed query for name and qtype, with EDNS (and DO) when
// asked.
func query(t testing.TB, name string, qtype uint16, edns, do bool) dnswire.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = dns.Id()
	if edns {
		m.SetEdns0(1232, do)
	}
	return parse(t, m)
}

func parse(t testing.TB, m *dns.Msg) dnswire.Msg {
	t.Helper()
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

// ask sends q through Exchange and decodes the answer.
func (h *harness) ask(t testing.TB, q dnswire.Msg) (*dns.Msg, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	ans, err := h.Exchange(ctx, q)
	if err != nil {
		return nil, err
	}
	return decode(t, ans.Wire(), q), nil
}

// mustAsk is ask for queries that must get an answer.
func (h *harness) mustAsk(t testing.TB, q dnswire.Msg) *dns.Msg {
	t.Helper()
	r, err := h.ask(t, q)
	if err != nil {
		t.Fatalf("Exchange: %v", err)
	}
	return r
}

// look sends q through Lookup and decodes the answer, if there is one.
func (h *harness) look(t testing.TB, q dnswire.Msg) (*dns.Msg, bool) {
	t.Helper()
	b, ok := h.Lookup(nil, &q)
	if !ok {
		if len(b) != 0 {
			t.Fatalf("Lookup missed but wrote %d bytes", len(b))
		}
		return nil, false
	}
	return decode(t, b, q), true
}

// decode unpacks an answer and checks that it answers q: its ID, QR, its
// question as spelled.
func decode(t testing.TB, b []byte, q dnswire.Msg) *dns.Msg {
	t.Helper()
	r := new(dns.Msg)
	if err := r.Unpack(b); err != nil {
		t.Fatalf("answer does not unpack: %v", err)
	}
	if r.Id != q.ID || !r.Response || len(r.Question) != 1 || r.Question[0].Name != q.QNameText() {
		t.Fatalf("answer %v does not answer query %d %s", r.MsgHdr, q.ID, q.QNameText())
	}
	return r
}

// ttls lists the TTLs of r's answer and authority records.
func ttls(r *dns.Msg) []uint32 {
	var out []uint32
	for _, rr := range append(append([]dns.RR(nil), r.Answer...), r.Ns...) {
		out = append(out, rr.Header().Ttl)
	}
	return out
}

// staleEDE reports whether r carries EDE 3 (Stale Answer).
func staleEDE(r *dns.Msg) bool {
	if opt := r.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok && e.InfoCode == dns.ExtendedErrorCodeStaleAnswer {
				return true
			}
		}
	}
	return false
}

// counter reads a collector's value.
func counter(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// waitFor polls cond until it holds or ioTimeout passes: for what the cache
// does in the background and tells no one.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func parseBytes(b []byte) (dnswire.Msg, error) { return dnswire.Parse(b) }
