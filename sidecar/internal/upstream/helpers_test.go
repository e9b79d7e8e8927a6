package upstream

import (
	"cmp"
	"context"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// testLogger discards unless UPSTREAM_TEST_LOG=1, which prints debug logs.
func testLogger() *slog.Logger {
	if os.Getenv("UPSTREAM_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testDoTOptions are the options every test DoT starts from: toward srv,
// trusting srv's CA. The package has no defaults (they are the settings',
// package config); these are the tests' own values, in this one place.
func testDoTOptions(srv *dnstest.Server) DoTOptions {
	return DoTOptions{
		Addr:               srv.Addr,
		ServerName:         srv.ServerName,
		Trust:              NewTrust(srv.CAPool, nil),
		PoolSize:           2,
		DialTimeout:        2 * time.Second,
		IdleTimeout:        30 * time.Second,
		MaxAge:             5 * time.Minute,
		MaxInFlightPerConn: 1024,
		QueryTimeout:       2 * time.Second,
		Logger:             testLogger(),
		Metrics:            NewMetrics(prometheus.NewRegistry()),
	}
}

// testGroupOptions returns opts with each zero setting given the tests' own
// value (Upstreams, Logger and Metrics are the caller's).
func testGroupOptions(opts GroupOptions) GroupOptions {
	opts.MaxAttempts = cmp.Or(opts.MaxAttempts, 3)
	opts.BaseDelay = cmp.Or(opts.BaseDelay, 10*time.Millisecond)
	opts.MaxFails = cmp.Or(opts.MaxFails, 3)
	opts.ProbeInterval = cmp.Or(opts.ProbeInterval, time.Second)
	opts.ProbeTimeout = cmp.Or(opts.ProbeTimeout, time.Second)
	opts.PartialWindow = cmp.Or(opts.PartialWindow, 5*time.Second)
	return opts
}

// newTestDoT returns a DoT built from testDoTOptions(srv), closed at the end
// of the test; mod adjusts the options.
func newTestDoT(t testing.TB, srv *dnstest.Server, mod func(*DoTOptions)) *DoT {
	t.Helper()
	opts := testDoTOptions(srv)
	if mod != nil {
		mod(&opts)
	}
	d, err := NewDoT(opts)
	if err != nil {
		t.Fatalf("NewDoT: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// packQuery returns a parsed query for name and qtype with a random ID.
func packQuery(t testing.TB, name string, qtype uint16) dnswire.Msg {
	t.Helper()
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	return parseMsg(t, q)
}

// parseMsg packs m and parses it, as the server does with a client's query.
func parseMsg(t testing.TB, m *dns.Msg) dnswire.Msg {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("packing query: %v", err)
	}
	q, err := dnswire.Parse(b)
	if err != nil {
		t.Fatalf("parsing query: %v", err)
	}
	return q
}

// checkAnswer checks that resp answers query (same ID and question) with
// dnstest's default A record, and that the Msg agrees with its bytes.
func checkAnswer(resp, query dnswire.Msg) error {
	q, r := new(dns.Msg), new(dns.Msg)
	if err := q.Unpack(query.Wire()); err != nil {
		return err
	}
	if err := r.Unpack(resp.Wire()); err != nil {
		return err
	}
	if !resp.Valid() || resp.ID != r.Id || !resp.Answers(&query) {
		return errorf("answer's Msg %+v does not say what its bytes do", resp.Header)
	}
	if r.Id != q.Id {
		return errorf("ID %d, want %d", r.Id, q.Id)
	}
	if len(r.Question) != 1 || r.Question[0] != q.Question[0] {
		return errorf("question %v, want %v", r.Question, q.Question)
	}
	if len(r.Answer) != 1 {
		return errorf("%d answers, want 1", len(r.Answer))
	}
	a, ok := r.Answer[0].(*dns.A)
	if !ok || !a.A.Equal(dnstest.AnswerA.AsSlice()) || a.Hdr.Name != q.Question[0].Name {
		return errorf("answer %v", r.Answer[0])
	}
	return nil
}

// answerTimeout is the deadline of a query the test expects answered, where
// the deadline plays no part in what is tested: a query answered in
// milliseconds on a calm machine may take seconds on 2 cores busy with other
// race-detector builds, and a missed deadline would count against the
// upstream's health and cascade into unrelated failures.
const answerTimeout = 10 * time.Second

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually waits for cond, polling, and fails the test if it does not hold
// within timeout. It stands in for a notification the code under test has
// no reason to offer (a server-side count, a metric).
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func counterValue(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// poolConsistent reports whether d's bookkeeping agrees with itself: the
// slot count equals the connections listed plus the dial in progress, and
// no listed connection is dead.
func poolConsistent(d *DoT) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	listed := append(append([]*conn(nil), d.activeConns()...), d.draining...)
	n := len(listed)
	if d.dialing != nil {
		n++
	}
	if int(d.total.Load()) != n || n > d.opts.PoolSize {
		return false
	}
	for _, c := range listed {
		if c.isDead() {
			return false
		}
	}
	return true
}

// expiringCtx is a context whose deadline passes when the test calls expire:
// a timeout at a chosen point of a sequence rather than after a guessed
// duration. Deadline reports a time far enough ahead that nothing treats
// the query as short of time.
type expiringCtx struct {
	context.Context
	deadline time.Time
	done     chan struct{}
	once     sync.Once
}

func newExpiringCtx() *expiringCtx {
	return &expiringCtx{Context: context.Background(), deadline: time.Now().Add(time.Hour), done: make(chan struct{})}
}

func (c *expiringCtx) Deadline() (time.Time, bool) { return c.deadline, true }
func (c *expiringCtx) Done() <-chan struct{}       { return c.done }
func (c *expiringCtx) expire()                     { c.once.Do(func() { close(c.done) }) }

func (c *expiringCtx) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// transports are the kinds of upstream the tests shared by DoT and DoH run
// against: each runs a dnstest server in that mode (newTestServer) and the
// matching client (newTestUpstream).
var transports = []string{"dot", "doh"}

// newTestServer starts a dnstest server speaking transport.
func newTestServer(t testing.TB, transport string, opts dnstest.Options) *dnstest.Server {
	t.Helper()
	opts.DoH = transport == "doh"
	return dnstest.New(t, opts)
}

// testUpstream is what the shared tests use of a DoT or a DoH.
type testUpstream interface {
	Upstream
	Reverify() int
	core() *tlsUpstream
	retireAll()     // retires every usable connection
	openConns() int // connections open or dialing (the pool's slot count)
	usable() int    // connections taking new queries
	consistent() bool
	grow()
	conns() []testConn // the usable connections
	hasRoom() bool     // whether a usable connection takes another query now
}

// testConn is what the shared tests use of a DoT's or a DoH's connection.
type testConn interface {
	retire(why string)
	isClosing() bool
}

func (c *conn) isClosing() bool    { return c.closing.Load() }
func (c *dohConn) isClosing() bool { return c.closing.Load() }

func (d *DoT) conns() []testConn {
	var out []testConn
	for _, c := range d.activeConns() {
		out = append(out, c)
	}
	return out
}

func (d *DoH) conns() []testConn {
	var out []testConn
	for _, c := range d.activeConns() {
		out = append(out, c)
	}
	return out
}

func (d *DoT) hasRoom() bool { return d.pick() != nil }

// hasRoom is pick without reserving: a usable connection below its stream
// limit.
func (d *DoH) hasRoom() bool {
	for _, c := range d.activeConns() {
		if !c.closing.Load() && c.load.Load() < c.maxStreams {
			return true
		}
	}
	return false
}

func (d *DoT) usable() int { return len(d.activeConns()) }
func (d *DoH) usable() int { return len(d.activeConns()) }

func (d *DoT) consistent() bool { return poolConsistent(d) }

// consistent is poolConsistent for a DoH: the slot count equals the
// connections listed plus the dial in progress, and none listed is closed.
func (d *DoH) consistent() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	listed := append(append([]*dohConn(nil), d.activeConns()...), d.draining...)
	n := len(listed)
	if d.dialing != nil {
		n++
	}
	if int(d.total.Load()) != n || n > d.opts.PoolSize {
		return false
	}
	for _, c := range listed {
		c.mu.Lock()
		dead := c.dead
		c.mu.Unlock()
		if dead {
			return false
		}
	}
	return true
}

func (t *tlsUpstream) core() *tlsUpstream { return t }

func (d *DoT) retireAll() {
	for _, c := range d.activeConns() {
		c.retire("test")
	}
}

func (d *DoH) retireAll() {
	for _, c := range d.activeConns() {
		c.retire("test")
	}
}

func (d *DoT) openConns() int { return int(d.total.Load()) }
func (d *DoH) openConns() int { return int(d.total.Load()) }

// newTestUpstream returns the client for srv's transport, built from
// testDoTOptions(srv) adjusted by mod (a DoH takes the same values), closed
// at the end of the test.
func newTestUpstream(t testing.TB, srv *dnstest.Server, mod func(*DoTOptions)) testUpstream {
	t.Helper()
	if srv.Path == "" {
		return newTestDoT(t, srv, mod)
	}
	o := testDoTOptions(srv)
	if mod != nil {
		mod(&o)
	}
	d, err := NewDoH(dohOptions(o, srv.Path))
	if err != nil {
		t.Fatalf("NewDoH: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// dohOptions are o's values for a DoH upstream at path.
func dohOptions(o DoTOptions, path string) DoHOptions {
	return DoHOptions{DoTOptions: o, Path: path}
}

// newTestDoH starts a DoH test server and returns it with a DoH upstream
// built from testDoTOptions, both closed at the end of the test; mod
// adjusts the options.
func newTestDoH(t testing.TB, sopts dnstest.Options, mod func(*DoHOptions)) (*dnstest.Server, *DoH) {
	t.Helper()
	sopts.DoH = true
	srv := dnstest.New(t, sopts)
	opts := dohOptions(testDoTOptions(srv), srv.Path)
	if mod != nil {
		mod(&opts)
	}
	d, err := NewDoH(opts)
	if err != nil {
		t.Fatalf("NewDoH: %v", err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return srv, d
}

func itoa[T ~int | ~uint16](n T) string { return strconv.Itoa(int(n)) }
