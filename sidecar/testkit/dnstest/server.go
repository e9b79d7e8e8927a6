// Package dnstest runs in-process DNS servers on loopback for tests and
// benchmarks: a DNS-over-TLS server (this file), the same as a
// DNS-over-HTTPS one (Options.DoH, doh.go), and a plaintext one on UDP and
// TCP (plain.go) to stand for a cluster's resolver.
//
// Unlike dns.Server's TCP loop, which answers one query at a time per
// connection, the DoT server pipelines: it reads queries as they come and
// answers each as soon as it is ready, in any order. Tests script its
// misbehaviour through Behavior while it runs, and assert on its counters
// (connections accepted, handshakes, queries).
//
// Its certificates are made at start by testpki; nothing secret is kept on
// disk.
package dnstest

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
	"github.com/miekg/dns"
)

// Handler answers a query; nil means no answer.
type Handler func(query *dns.Msg) *dns.Msg

// RawHandler answers a query in wire format by appending the response to dst
// (nil or dst unchanged: no answer). It skips miekg/dns's decoding so that
// benchmarks measure the client rather than the server.
type RawHandler func(dst, query []byte) []byte

// Options configures a Server. The zero value serves DefaultHandler on
// 127.0.0.1 for the name "dns.test".
type Options struct {
	Handler    Handler    // default DefaultHandler
	Raw        RawHandler // when set, used instead of Handler
	ServerName string     // default "dns.test"
	IPv6       bool       // listen on [::1] instead of 127.0.0.1

	// DoH serves DNS over HTTPS on Path (default DefaultPath) instead of
	// DNS over TLS, with MaxStreams concurrent streams per connection
	// (0: the HTTP/2 server's default).
	DoH        bool
	Path       string
	MaxStreams int
}

// DefaultServerName is the name the server's certificate carries by default.
const DefaultServerName = "dns.test"

// Address answers: documentation addresses (RFC 5737, RFC 3849).
var (
	AnswerA    = netip.MustParseAddr("192.0.2.1")
	AnswerAAAA = netip.MustParseAddr("2001:db8::1")
)

// Server is a DNS-over-TLS server on a loopback port.
type Server struct {
	Addr       netip.AddrPort
	ServerName string
	Path       string // the DoH endpoint's path; "" for DoT
	CA         *testpki.CA
	CAPool     *x509.CertPool // trusts CA only
	CAPEM      []byte
	Leaf       *testpki.Leaf
	// Pins in TLS_PINS form (base64 SPKI SHA-256) and as raw digests.
	LeafPin, CAPin       string
	LeafPinSum, CAPinSum [32]byte

	// Behavior scripts misbehaviour; change it at any time.
	Behavior Behavior

	handler Handler
	raw     RawHandler
	certs   [4]*tls.Certificate // by CertKind
	tlsConf *tls.Config
	ln      net.Listener
	httpSrv *http.Server  // DoH only
	httpLn  *connListener // DoH only: connections handed to httpSrv
	// httpConns maps each connection handed to httpSrv to its *httpConn.
	httpConns sync.Map

	accepted   atomic.Int64
	handshakes atomic.Int64
	resumed    atomic.Int64
	queries    atomic.Int64
	open       atomic.Int64
	maxOpen    atomic.Int64
	maxOutst   atomic.Int64
	idleClosed atomic.Int64

	mu          sync.Mutex
	authorities map[string]bool        // DoH :authority values seen
	snis        map[string]bool        // DoH TLS server names seen
	methods     map[string]bool        // DoH HTTP methods seen
	conns       map[net.Conn]*tls.Conn // the TLS side once its handshake is done
	openConns   map[net.Conn]bool      // counted in open
	closed      bool
	stopped     bool // by Stop, until Restart
	done        chan struct{}
	wg          sync.WaitGroup
}

// New starts a server and closes it when the test ends.
func New(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := Start(opts)
	if err != nil {
		tb.Fatalf("starting DNS test server: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// Start makes the certificates and starts serving.
func Start(opts Options) (*Server, error) {
	if opts.ServerName == "" {
		opts.ServerName = DefaultServerName
	}
	if opts.Handler == nil {
		opts.Handler = DefaultHandler
	}
	s := &Server{
		ServerName: opts.ServerName,
		handler:    opts.Handler,
		raw:        opts.Raw,
		conns:      make(map[net.Conn]*tls.Conn),
		openConns:  make(map[net.Conn]bool),
		done:       make(chan struct{}),
	}
	if err := s.makeCerts(); err != nil {
		return nil, err
	}
	s.tlsConf = &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"dot"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			k := s.Behavior.Cert.Load()
			if k < 0 || int(k) >= len(s.certs) {
				k = int32(CertGood)
			}
			return s.certs[k], nil
		},
	}
	if opts.DoH {
		s.Path = cmp.Or(opts.Path, DefaultPath)
		s.tlsConf.NextProtos = []string{"h2"}
		h2 := s.tlsConf
		noH2 := h2.Clone()
		noH2.NextProtos = []string{"http/1.1"}
		s.tlsConf = &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			if s.Behavior.NoH2.Load() {
				return noH2, nil
			}
			return h2, nil
		}}
	}
	host := "127.0.0.1:0"
	if opts.IPv6 {
		host = "[::1]:0"
	}
	ln, err := net.Listen("tcp", host)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", host, err)
	}
	s.ln = ln
	s.Addr = ln.Addr().(*net.TCPAddr).AddrPort()
	if opts.DoH {
		s.startHTTP(opts.MaxStreams)
	}
	s.wg.Add(1)
	go s.acceptLoop(ln)
	return s, nil
}

func (s *Server) makeCerts() error {
	ca, err := testpki.NewCA("dnstest CA")
	if err != nil {
		return err
	}
	leaf, err := ca.Issue([]string{s.ServerName}, nil)
	if err != nil {
		return err
	}
	other, err := testpki.NewCA("dnstest foreign CA")
	if err != nil {
		return err
	}
	foreign, err := other.Issue([]string{s.ServerName}, nil)
	if err != nil {
		return err
	}
	wrongName, err := ca.Issue([]string{"other." + s.ServerName}, nil)
	if err != nil {
		return err
	}
	rekeyed, err := ca.Issue([]string{s.ServerName}, nil)
	if err != nil {
		return err
	}
	s.CA, s.Leaf, s.CAPEM = ca, leaf, ca.PEM
	s.CAPool = x509.NewCertPool()
	s.CAPool.AddCert(ca.Cert)
	s.LeafPin, s.CAPin = testpki.Pin(leaf.Cert), testpki.Pin(ca.Cert)
	s.LeafPinSum, s.CAPinSum = spki(leaf.Cert), spki(ca.Cert)
	s.certs = [4]*tls.Certificate{&leaf.TLS, &foreign.TLS, &wrongName.TLS, &rekeyed.TLS}
	return nil
}

// Accepted counts TCP connections accepted, handshakes completed or not.
func (s *Server) Accepted() int64 { return s.accepted.Load() }

// Handshakes counts completed TLS handshakes; Resumed those that resumed a
// session.
func (s *Server) Handshakes() int64 { return s.handshakes.Load() }
func (s *Server) Resumed() int64    { return s.resumed.Load() }

// Queries counts queries read, answered or not.
func (s *Server) Queries() int64 { return s.queries.Load() }

// Open is the number of TLS connections open now (handshake completed).
func (s *Server) Open() int64 { return s.open.Load() }

// MaxOpen is the most TLS connections the client held open at once, as
// counted each time a handshake completes: a connection the client has
// closed is not counted though this server has yet to handle its end.
// Counted by this server's own bookkeeping, as Open is, a client that
// closes one connection and at once dials another, as a pool at its size
// does, would be seen over its size whenever the server's goroutines ran
// late.
func (s *Server) MaxOpen() int64 { return s.maxOpen.Load() }

// opened counts raw as open and returns how many of the open connections
// the client may still hold (peerHolds), raw among them.
func (s *Server) opened(raw net.Conn) int64 {
	s.open.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.openConns[raw] = true
	var n int64
	for c := range s.openConns {
		if peerHolds(c) {
			n++
		}
	}
	return n
}

func (s *Server) closedOpen(raw net.Conn) {
	s.mu.Lock()
	delete(s.openConns, raw)
	s.mu.Unlock()
	s.open.Add(-1)
}

// IdleClosed counts connections the server closed for being idle as long
// as its keepalive announced (Behavior.KeepaliveNanos).
func (s *Server) IdleClosed() int64 { return s.idleClosed.Load() }

// MaxOutstanding is the most queries one connection has had read and not
// yet answered at once: how deep the client pipelined. Dropped queries
// do not count.
func (s *Server) MaxOutstanding() int64 { return s.maxOutst.Load() }

func (s *Server) noteOutstanding(n int64) { raise(&s.maxOutst, n) }

// raise sets max to n if n is larger.
func raise(max *atomic.Int64, n int64) {
	for {
		cur := max.Load()
		if n <= cur || max.CompareAndSwap(cur, n) {
			return
		}
	}
}

// Close stops the listener and every connection and waits for all of the
// server's goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	var err error
	if !s.stopped {
		err = s.ln.Close()
	}
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	if s.httpSrv != nil {
		_ = s.httpSrv.Close()
	}
	s.wg.Wait()
	return err
}

func (s *Server) acceptLoop(ln net.Listener) {
	defer s.wg.Done()
	for {
		raw, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.accepted.Add(1)
		if !s.track(raw) {
			_ = raw.Close()
			return
		}
		s.wg.Add(1)
		go s.serveConn(raw)
	}
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.stopped {
		return false
	}
	s.conns[c] = nil
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

const handshakeTimeout = 5 * time.Second

func (s *Server) serveConn(raw net.Conn) {
	defer s.wg.Done()
	defer s.untrack(raw)
	defer raw.Close()
	if s.Behavior.BlackHole.Load() {
		// Hold the connection and say nothing until the client or Close
		// ends it.
		buf := make([]byte, 512)
		for {
			if _, err := raw.Read(buf); err != nil {
				return
			}
		}
	}
	if tcp, ok := raw.(*net.TCPConn); ok && s.Behavior.Nagle.Load() {
		_ = tcp.SetNoDelay(false)
	}
	tc := tls.Server(raw, s.tlsConf)
	_ = raw.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.Handshake(); err != nil {
		return
	}
	_ = raw.SetDeadline(time.Time{})
	s.handshaken(raw, tc)
	s.handshakes.Add(1)
	if tc.ConnectionState().DidResume {
		s.resumed.Add(1)
	}
	if s.Behavior.HangUp.Load() {
		_ = tc.Close()
		return
	}
	raise(&s.maxOpen, s.opened(raw))
	defer s.closedOpen(raw)
	if s.httpSrv != nil {
		s.serveHTTPConn(raw, tc)
		return
	}
	c := newSession(s, raw, tc)
	c.serve()
}

func spki(cert *x509.Certificate) [32]byte { return sha256Sum(cert.RawSubjectPublicKeyInfo) }
