// Package server is the sidecar's DNS front end: the UDP and TCP listeners
// that the pod's redirected port-53 traffic reaches, and the handler that
// applies the protocol rules and relays each query to an upstream.Upstream.
//
// The handler forwards the header, question and OPT record of each query as
// the client sent them, and reads only those of queries and answers
// (package dnswire), so that unknown EDNS options and flags pass through
// unharmed and a relayed query costs no decoding: each query is parsed once
// here, on the read loop, and each answer once, by the upstream client that
// read it. A query in flight keeps nothing else of what the client sent.
//
// Every resource a client can make the server hold is bounded: queries in
// flight (MaxInFlight, admission.go), TCP connections and their unread
// answers (TCPMaxConns, TCPMaxUnread, tcpwrite.go), idle ones (tcpidle.go).
//
// What clients get:
//   - a message with QR set gets no answer; an opcode other than QUERY gets
//     NOTIMP; an EDNS version above 0 gets BADVERS; a malformed message (or
//     QDCOUNT other than 1) gets FORMERR when its 12-byte header can be read
//     and is dropped otherwise; the replies made here have a resolver's
//     flags and OPT record (dnswire.AppendReply, dnswire.ReplyEDNS);
//   - UDP answers are never larger than the client can take (512 bytes
//     without EDNS, the advertised size with it, at least 512 and at most
//     Options.UDPMaxSize); larger answers are truncated with TC set;
//   - a query without OPT gets an answer without OPT;
//   - a UDP answer leaves from the address its query was sent to, also on a
//     wildcard bind (pktinfo_linux.go);
//   - when no answer can be had, SERVFAIL, with an Extended DNS Error
//     (RFC 8914) when the query carried EDNS: 23 Network Error for TLS and
//     pin failures, 22 No Reachable Authority otherwise (see failure); a
//     query the upstream rejects as malformed gets FORMERR;
//   - the canary name is answered locally (see canary.go);
//   - with a Cache, queries it has answers for are answered from it, shaped
//     for each client (its ID, EDNS, size), in the read loop itself.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configures a Server. Every field is required but Port and
// Registerer: the defaults are the settings' (package config), and New
// refuses a zero it cannot use.
type Options struct {
	// BindAddrs are the addresses to listen on, each with UDP and/or TCP.
	BindAddrs []netip.Addr
	// BindExplicit tells that the operator listed BindAddrs. When false (the
	// default list), an address the host lacks (::1 in a pod with IPv6
	// disabled) is skipped with a warning; when true, every failure to bind
	// is fatal. Other errors (the port is taken) are always fatal.
	BindExplicit bool
	// Port to listen on. 0 picks a free port, the same for every listener
	// (tests use this; Addrs tells the port chosen).
	Port int
	// Proto is "udp", "tcp" or "both".
	Proto string

	// Upstream answers the queries the server does not answer itself.
	Upstream upstream.Upstream
	// Cache, when not nil, answers the queries it has fresh answers for,
	// from the read loops (Cache.Lookup). It is usually the Upstream too,
	// which the misses go to.
	Cache Cache

	// QueryTimeout bounds each query from its arrival to its answer;
	// clients get SERVFAIL when it runs out.
	QueryTimeout time.Duration
	// UDPMaxSize caps the EDNS payload size honoured for UDP answers (512 to
	// 65535).
	UDPMaxSize int
	// TCPIdleTimeout closes a TCP connection that has sent no query and has
	// none in flight for that long; it also bounds each write.
	TCPIdleTimeout time.Duration
	// TCPMaxConns bounds open TCP client connections; connections over the
	// limit are closed at once and counted.
	TCPMaxConns int
	// TCPMaxInFlight bounds the queries in flight on one TCP connection; the
	// server stops reading from a connection at the limit.
	TCPMaxInFlight int
	// TCPMaxUnread bounds, in bytes, the answers a TCP client leaves unread
	// once the kernel's buffers are full: the server stops reading its
	// queries at the limit, and closes the connection if more answers come
	// (tcpwrite.go).
	TCPMaxUnread int

	// MaxInFlight bounds the queries in flight over all listeners. A query
	// over the limit is answered SERVFAIL at once rather than parked, unless
	// queries in flight for long enough can be given up on to make room
	// for it (admission.go): with a black-holed upstream, every query would
	// otherwise hold memory for the whole QueryTimeout, and a flood could
	// grow the sidecar past its memory limit.
	MaxInFlight int

	// Logger is never nil. Per-query lines are logged at Debug only.
	Logger *slog.Logger
	// Registerer receives the server's collectors (metrics.go). nil keeps
	// them on a private registry that nothing exports.
	Registerer prometheus.Registerer
}

// Cache answers queries from memory, in the listeners' read loops: a hit
// costs a lookup and a write, no goroutine and no in-flight slot.
// cache.Cache is one.
type Cache interface {
	// Lookup appends to dst the answer to q shaped for its client, and
	// reports whether it had one; q passed the protocol rules. It must not
	// block, and should not allocate when dst has room.
	Lookup(dst []byte, q *dnswire.Msg) ([]byte, bool)
}

// Errors returned by Start, Shutdown and Alive.
var (
	ErrNotStarted = errors.New("server not started")
	ErrStarted    = errors.New("server already started")
	ErrShutdown   = errors.New("server shut down")
)

type state int32

const (
	stateNew state = iota
	stateServing
	stateShutdown
)

// Server is a DNS server on UDP and TCP. Create it with New, then Start it.
type Server struct {
	opts  Options
	up    upstream.Upstream
	cache Cache // nil: none
	log   *slog.Logger
	m     *metrics

	// base parents every query's context; Shutdown cancels it when its own
	// context ends before the queries do, so that they end in SERVFAIL.
	base   context.Context
	cancel context.CancelFunc
	adm    *admission    // queries in flight and their contexts, children of base
	idle   idlePolicy    // TCP idle timeouts (tcpidle.go)
	quit   chan struct{} // closed when Shutdown starts

	state   atomic.Int32
	closing atomic.Bool
	loopErr atomic.Pointer[error] // first serving loop that died unexpectedly

	mu    sync.Mutex // guards udp, tcp, conns and state transitions
	udp   []*net.UDPConn
	tcp   []*net.TCPListener
	conns map[*tcpConn]struct{}

	loops   sync.WaitGroup // UDP readers and TCP accept loops
	queries sync.WaitGroup // UDP queries being answered
	connWG  sync.WaitGroup // TCP connections (each waits for its queries)

	tcpOpen atomic.Int64

	// writeCutoff (Unix nanoseconds, 0: none) is the latest deadline any TCP
	// write may have, set when Shutdown's context ends (see cutWrites).
	writeCutoff atomic.Int64
}

// New checks opts and registers the metrics. It opens no socket; Start
// does.
func New(opts Options) (*Server, error) {
	if opts.Upstream == nil {
		return nil, errors.New("server: Options.Upstream is required")
	}
	if opts.Logger == nil {
		return nil, errors.New("server: Options.Logger is required")
	}
	if len(opts.BindAddrs) == 0 {
		return nil, errors.New("server: Options.BindAddrs is required")
	}
	for _, a := range opts.BindAddrs {
		if !a.IsValid() {
			return nil, fmt.Errorf("server: invalid bind address %v", a)
		}
	}
	if opts.Port < 0 || opts.Port > 65535 {
		return nil, fmt.Errorf("server: port %d out of range", opts.Port)
	}
	switch opts.Proto {
	case "udp", "tcp", "both":
	default:
		return nil, fmt.Errorf("server: proto %q: want udp, tcp or both", opts.Proto)
	}
	durations := []struct {
		v time.Duration
		n string
	}{
		{opts.QueryTimeout, "query timeout"},
		{opts.TCPIdleTimeout, "TCP idle timeout"},
	}
	for _, d := range durations {
		if d.v <= 0 {
			return nil, fmt.Errorf("server: %s %v: want more than 0", d.n, d.v)
		}
	}
	ints := []struct {
		v, min int
		n      string
	}{
		{opts.UDPMaxSize, 512, "UDP max size"},
		{opts.TCPMaxConns, 1, "TCP max connections"},
		{opts.TCPMaxInFlight, 1, "TCP max in-flight queries"},
		{opts.MaxInFlight, 1, "max in-flight queries"},
		{opts.TCPMaxUnread, 1, "TCP max unread bytes"},
	}
	for _, i := range ints {
		if i.v < i.min {
			return nil, fmt.Errorf("server: %s %d below %d", i.n, i.v, i.min)
		}
	}
	if opts.UDPMaxSize > 65535 {
		return nil, fmt.Errorf("server: UDP max size %d above 65535", opts.UDPMaxSize)
	}
	s := &Server{
		opts:  opts,
		up:    opts.Upstream,
		cache: opts.Cache,
		log:   opts.Logger,
		quit:  make(chan struct{}),
		conns: make(map[*tcpConn]struct{}),
	}
	s.base, s.cancel = context.WithCancel(context.Background())
	s.adm = newAdmission(s.base, opts.QueryTimeout, opts.MaxInFlight)
	s.idle = idlePolicy{base: opts.TCPIdleTimeout, limit: int64(opts.TCPMaxConns)}
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m, err := newMetrics(reg, s)
	if err != nil {
		return nil, fmt.Errorf("server: registering metrics: %w", err)
	}
	s.m = m
	return s, nil
}

// Start binds every listener and returns once all are bound (or with the
// first error, having closed what it bound); the server then serves in
// background goroutines until Shutdown.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch state(s.state.Load()) {
	case stateServing:
		return ErrStarted
	case stateShutdown:
		return ErrShutdown
	}
	udp, tcp, err := s.bind()
	if err != nil {
		return err
	}
	s.udp, s.tcp = udp, tcp
	s.state.Store(int32(stateServing))
	// Reads on one socket are serialised by the kernel and the runtime, but
	// several readers keep one ready while another hands a query off.
	readers := runtime.GOMAXPROCS(0)
	for _, c := range udp {
		u := newUDPSocket(c)
		for range readers {
			s.loops.Add(1)
			go s.readUDP(u)
		}
	}
	for _, l := range tcp {
		s.loops.Add(1)
		go s.acceptTCP(l)
	}
	return nil
}

// Addrs returns the bound addresses: a *net.UDPAddr or *net.TCPAddr each.
func (s *Server) Addrs() []net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []net.Addr
	for _, c := range s.udp {
		out = append(out, c.LocalAddr())
	}
	for _, l := range s.tcp {
		out = append(out, l.Addr())
	}
	return out
}

// Alive reports, cheaply, whether the listeners' loops work, for a liveness
// probe: ErrNotStarted before Start, the error of a loop that died while it
// should have been serving, nil otherwise. A deliberate Shutdown is not a
// failure: failing liveness while in-flight queries drain could only get
// the container killed before they are answered. It never looks at
// upstream health.
func (s *Server) Alive() error {
	if err := s.loopErr.Load(); err != nil {
		return *err
	}
	if state(s.state.Load()) == stateNew {
		return ErrNotStarted
	}
	return nil
}

// loopDied records that a serving loop stopped while it should be serving.
func (s *Server) loopDied(err error) {
	s.loopErr.CompareAndSwap(nil, &err)
	s.log.Error("DNS listener stopped", "err", err)
}

// Shutdown stops reading and accepting queries, then waits for the queries
// in flight to be answered. If ctx ends first, the remaining queries are cut
// short and answered SERVFAIL, and Shutdown returns ctx's error once they
// are. It closes every socket and leaves no goroutine behind.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	switch state(s.state.Load()) {
	case stateNew:
		s.state.Store(int32(stateShutdown))
		s.mu.Unlock()
		s.cancel()
		return nil
	case stateShutdown:
		s.mu.Unlock()
		return ErrShutdown
	}
	s.state.Store(int32(stateShutdown))
	s.closing.Store(true)
	close(s.quit)
	// A read deadline in the past wakes the UDP readers yet keeps the
	// sockets open for the answers still to be sent.
	for _, c := range s.udp {
		_ = c.SetReadDeadline(aLongTimeAgo)
	}
	for _, l := range s.tcp {
		_ = l.Close()
	}
	for c := range s.conns {
		c.stopReading()
	}
	s.mu.Unlock()

	s.loops.Wait()
	drained := make(chan struct{})
	go func() {
		s.queries.Wait()
		s.connWG.Wait()
		close(drained)
	}()
	var err error
	select {
	case <-drained:
	case <-ctx.Done():
		select {
		case <-drained: // done just in time
		default:
			s.cancel()
			s.cutWrites(time.Now().Add(shutdownWriteGrace))
			<-drained
			err = fmt.Errorf("shutdown cut in-flight queries short: %w", ctx.Err())
		}
	}
	s.cancel()
	s.mu.Lock()
	for _, c := range s.udp {
		_ = c.Close()
	}
	s.mu.Unlock()
	return err
}

var aLongTimeAgo = time.Unix(1, 0)

// shutdownWriteGrace is how long the answers still owed when Shutdown's
// context ends (mostly SERVFAIL) have to reach their TCP clients: plenty for
// a client that reads, and a bound for one that does not, whose blocked
// write would otherwise hold Shutdown for up to TCPIdleTimeout.
const shutdownWriteGrace = 100 * time.Millisecond

// cutWrites makes every TCP write, in progress or to come, end by t.
func (s *Server) cutWrites(t time.Time) {
	s.writeCutoff.Store(t.UnixNano())
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		_ = c.nc.SetWriteDeadline(t)
	}
}
