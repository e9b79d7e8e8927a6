package server

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	testkit.Main(m, func() error { return goleak.Find() })
}

var (
	loopback4 = netip.MustParseAddr("127.0.0.1")
	loopback6 = netip.MustParseAddr("::1")
	// defaultBindAddrs is the sidecar's default BIND_ADDRESS list.
	defaultBindAddrs = []netip.Addr{loopback4, loopback6}
)

// testOptions returns opts with each zero setting given the tests' own
// value. The package has no defaults (they are the settings', package
// config); these are the tests', in this one place. Bind addresses, the
// upstream and the logger are the callers' to choose.
func testOptions(opts Options) Options {
	opts.Proto = cmp.Or(opts.Proto, "both")
	opts.QueryTimeout = cmp.Or(opts.QueryTimeout, 2*time.Second)
	opts.UDPMaxSize = cmp.Or(opts.UDPMaxSize, testUDPMaxSize)
	opts.TCPIdleTimeout = cmp.Or(opts.TCPIdleTimeout, 10*time.Second)
	opts.TCPMaxConns = cmp.Or(opts.TCPMaxConns, 1000)
	opts.TCPMaxInFlight = cmp.Or(opts.TCPMaxInFlight, 128)
	opts.TCPMaxUnread = cmp.Or(opts.TCPMaxUnread, 16384)
	opts.MaxInFlight = cmp.Or(opts.MaxInFlight, 2048)
	return opts
}

// testUDPMaxSize is the UDPMaxSize of tests that set none.
const testUDPMaxSize = 1232

// testDoTOptions are the options of a DoT client toward ds, trusting its CA,
// with one connection, for tests that relay through the real upstream path.
func testDoTOptions(ds *dnstest.Server, log *slog.Logger) upstream.DoTOptions {
	return upstream.DoTOptions{
		Addr:               ds.Addr,
		ServerName:         ds.ServerName,
		Trust:              upstream.NewTrust(ds.CAPool, nil),
		PoolSize:           1,
		DialTimeout:        2 * time.Second,
		IdleTimeout:        30 * time.Second,
		MaxAge:             5 * time.Minute,
		MaxInFlightPerConn: 1024,
		QueryTimeout:       2 * time.Second,
		Logger:             log,
		Metrics:            upstream.NewMetrics(prometheus.NewRegistry()),
	}
}

// ioTimeout bounds every client read in the tests, so that a server that
// stays silent fails a test instead of hanging it.
const ioTimeout = 5 * time.Second

// lateSlack is how late a timer-driven event (a deadline's SERVFAIL, an idle
// close) may come in a test: scheduling on a loaded machine under -race
// adds hundreds of milliseconds at worst, and the bugs these checks look for
// are off by seconds (another timer) or forever (no answer at all).
const lateSlack = time.Second

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testServer is a started Server on loopback port 0 with its own registry.
type testServer struct {
	*Server
	up  *localUpstream
	reg *prometheus.Registry
}

// startServer starts a server with testOptions(opts), on 127.0.0.1 unless
// opts says otherwise, with a local upstream and a test logger unless opts
// has its own, and shuts it down when the test ends.
func startServer(t testing.TB, opts Options) *testServer {
	t.Helper()
	ts := &testServer{reg: prometheus.NewRegistry()}
	opts = testOptions(opts)
	if opts.BindAddrs == nil {
		opts.BindAddrs, opts.BindExplicit = []netip.Addr{loopback4}, true
	}
	if opts.Upstream == nil {
		ts.up = newLocalUpstream()
		opts.Upstream = ts.up
	}
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	opts.Registerer = ts.reg
	s, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	ts.Server = s
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil && err != ErrShutdown {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return ts
}

// setJostleAfter changes how old a query in flight must be to be given up
// on for a new one at MaxInFlight.
func (ts *testServer) setJostleAfter(d time.Duration) {
	ts.adm.mu.Lock()
	ts.adm.jostleAfter = d
	ts.adm.mu.Unlock()
}

// addr returns the server's address for network ("udp" or "tcp") and the
// given IP family.
func (ts *testServer) addr(t testing.TB, network string, ip netip.Addr) netip.AddrPort {
	t.Helper()
	for _, a := range ts.Addrs() {
		var ap netip.AddrPort
		switch a := a.(type) {
		case *net.UDPAddr:
			if network != "udp" {
				continue
			}
			ap = a.AddrPort()
		case *net.TCPAddr:
			if network != "tcp" {
				continue
			}
			ap = a.AddrPort()
		}
		if ap.Addr().Unmap() == ip {
			return ap
		}
	}
	t.Fatalf("server has no %s address on %s: %v", network, ip, ts.Addrs())
	return netip.AddrPort{}
}

// have6 tells whether the host has ::1.
func have6() bool {
	c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// need6 skips (fails under CI) when the host has no ::1.
func need6(t testing.TB) {
	t.Helper()
	if !have6() {
		testkit.Missing(t, "this host has no IPv6 loopback address ::1")
	}
}

// exchange sends raw bytes to addr over network and returns the raw answer.
func exchange(t testing.TB, network string, addr netip.AddrPort, msg []byte) []byte {
	t.Helper()
	ans, err := tryExchange(network, addr, msg)
	if err != nil {
		t.Fatal(err)
	}
	return ans
}

// tryExchange is exchange for goroutines that must not call t.Fatal.
func tryExchange(network string, addr netip.AddrPort, msg []byte) ([]byte, error) {
	c, err := net.DialTimeout(network, addr.String(), ioTimeout)
	if err != nil {
		return nil, fmt.Errorf("dialing %s %s: %w", network, addr, err)
	}
	defer c.Close()
	if err := writeMsg(c, network, msg); err != nil {
		return nil, fmt.Errorf("writing query: %w", err)
	}
	ans, err := readMsg(c, network)
	if err != nil {
		return nil, fmt.Errorf("reading answer over %s: %w", network, err)
	}
	return ans, nil
}

func writeMsg(c net.Conn, network string, msg []byte) error {
	_ = c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if network == "tcp" {
		msg = append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
	}
	_, err := c.Write(msg)
	return err
}

// readMsg reads one message, with a buffer large enough to see an answer
// bigger than the server should have sent.
func readMsg(c net.Conn, network string) ([]byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(ioTimeout))
	if network == "udp" {
		buf := make([]byte, 65536)
		n, err := c.Read(buf)
		return buf[:n], err
	}
	var prefix [2]byte
	if _, err := io.ReadFull(c, prefix[:]); err != nil {
		return nil, err
	}
	buf := make([]byte, binary.BigEndian.Uint16(prefix[:]))
	_, err := io.ReadFull(c, buf)
	return buf, err
}

// ask sends m and decodes the answer; it returns the raw answer too.
func ask(t testing.TB, network string, addr netip.AddrPort, m *dns.Msg) (*dns.Msg, []byte) {
	t.Helper()
	q, err := m.Pack()
	if err != nil {
		t.Fatalf("packing query: %v", err)
	}
	raw := exchange(t, network, addr, q)
	r := new(dns.Msg)
	if err := r.Unpack(raw); err != nil {
		t.Fatalf("answer does not unpack: %v", err)
	}
	return r, raw
}

func newQuery(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = dns.Id()
	return m
}

func ednsQuery(name string, qtype uint16, size uint16) *dns.Msg {
	m := newQuery(name, qtype)
	m.SetEdns0(size, true)
	return m
}

func ede(m *dns.Msg) *dns.EDNS0_EDE {
	opt := m.IsEdns0()
	if opt == nil {
		return nil
	}
	for _, o := range opt.Option {
		if e, ok := o.(*dns.EDNS0_EDE); ok {
			return e
		}
	}
	return nil
}

// waitFor polls cond until it holds or the deadline passes: for state the
// server changes asynchronously and exposes no event for.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// awaitHeld collects n "hold" queries as they reach the upstream.
func (u *localUpstream) awaitHeld(t testing.TB, n int) map[string]held {
	t.Helper()
	out := make(map[string]held, n)
	timeout := time.After(ioTimeout)
	for len(out) < n {
		select {
		case h := <-u.arrived:
			out[h.name] = h
		case <-timeout:
			t.Fatalf("only %d of %d held queries reached the upstream", len(out), n)
		}
	}
	return out
}

// releaseAll releases held queries once, however often it is called.
type releaser struct {
	once sync.Once
	hs   map[string]held
}

func (r *releaser) all() {
	r.once.Do(func() {
		for _, h := range r.hs {
			close(h.release)
		}
	})
}

// newUnstarted returns a Server built from testOptions(opts), on the
// default bind list unless opts has its own, that is never started: for
// driving answer directly.
func newUnstarted(t testing.TB, opts Options) *Server {
	t.Helper()
	opts = testOptions(opts)
	if opts.BindAddrs == nil {
		opts.BindAddrs = defaultBindAddrs
	}
	if opts.Upstream == nil {
		opts.Upstream = newLocalUpstream()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	opts.Registerer = prometheus.NewRegistry()
	s, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

func mustParse(t testing.TB, b []byte) dnswire.Msg {
	t.Helper()
	m, err := dnswire.Parse(b)
	if err != nil {
		t.Fatalf("parsing: %v", err)
	}
	return m
}

func newTextLogger(w io.Writer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }
