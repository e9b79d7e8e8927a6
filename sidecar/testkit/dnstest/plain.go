package dnstest

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// PlainServer is a plaintext DNS server on UDP and TCP, one port for both,
// as a cluster's resolver (kube-dns) would be. It is built on miekg/dns's
// server, which answers the queries of one TCP connection one at a time, as
// CoreDNS (built on it) does. It records every query it reads, so that a
// test can assert which names reached it, and it can be stopped and
// started again on the same address to play a resolver that goes down and
// comes back.
type PlainServer struct {
	// Addr is where it listens, UDP and TCP.
	Addr netip.AddrPort
	// Behavior scripts misbehaviour; change it at any time.
	Behavior PlainBehavior

	handler Handler

	mu      sync.Mutex // guards queries only: handlers take it
	queries []Query

	// life serialises Start and Stop. It is not mu: Stop waits for the
	// handlers in flight, and one of them may be waiting for mu to record
	// its query.
	life    sync.Mutex
	udp     *dns.Server
	tcp     *dns.Server
	serving sync.WaitGroup // the two ActivateAndServe calls
	running bool
}

// PlainBehavior scripts how a PlainServer misbehaves. The zero value is a
// well-behaved server.
type PlainBehavior struct {
	// Drop: read and record queries, never answer.
	Drop atomic.Bool
	// DelayNanos delays every answer, in nanoseconds.
	DelayNanos atomic.Int64
	// Truncate: answer UDP queries with no records and TC set, so that
	// the client asks again over TCP.
	Truncate atomic.Bool
	// Spoof: before each UDP answer, send two decoys: the answer from
	// another port of the server's address, and the answer with another
	// ID. A client must ignore both.
	Spoof atomic.Bool
}

// Query is one query a PlainServer read.
type Query struct {
	Name  string // lower case, with the final dot
	Type  uint16
	Proto string // "udp" or "tcp"
	// From is the client's address: its source port tells UDP sockets
	// apart.
	From netip.AddrPort
}

// PlainOptions configures a PlainServer. The zero value serves
// DefaultHandler on 127.0.0.1 and a free port.
type PlainOptions struct {
	Handler Handler
	// IP to listen on; default 127.0.0.1. Linux routes all of 127/8 to lo,
	// so several servers may share a port on different addresses.
	IP netip.Addr
	// Port to listen on; 0 picks a free one, the same for UDP and TCP.
	Port uint16
}

// NewPlain starts a PlainServer and stops it when the test ends.
func NewPlain(tb testing.TB, opts PlainOptions) *PlainServer {
	tb.Helper()
	s, err := StartPlain(opts)
	if err != nil {
		tb.Fatalf("starting plain DNS test server: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// StartPlain starts a PlainServer.
func StartPlain(opts PlainOptions) (*PlainServer, error) {
	if opts.Handler == nil {
		opts.Handler = DefaultHandler
	}
	if !opts.IP.IsValid() {
		opts.IP = netip.MustParseAddr("127.0.0.1")
	}
	s := &PlainServer{handler: opts.Handler}
	var err error
	for range 20 {
		s.Addr = netip.AddrPortFrom(opts.IP, opts.Port)
		if err = s.Start(); err == nil || opts.Port != 0 {
			return s, err
		}
	}
	return nil, err
}

// Start starts serving on Addr; with port 0, on a free port it then keeps.
// Starting a running server does nothing.
func (s *PlainServer) Start() error {
	s.life.Lock()
	defer s.life.Unlock()
	if s.running {
		return nil
	}
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(s.Addr))
	if err != nil {
		return err
	}
	port := pc.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	ln, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(s.Addr.Addr(), port)))
	if err != nil {
		_ = pc.Close()
		return fmt.Errorf("TCP on the UDP port %d: %w", port, err)
	}
	s.Addr = netip.AddrPortFrom(s.Addr.Addr(), port)
	h := dns.HandlerFunc(s.serveDNS)
	s.udp = &dns.Server{PacketConn: pc, Handler: h}
	s.tcp = &dns.Server{Listener: ln, Handler: h, IdleTimeout: func() time.Duration { return 10 * time.Second }}
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		errc := make(chan error, 1)
		s.serving.Go(func() { errc <- srv.ActivateAndServe() })
		select {
		case <-started:
		case err := <-errc:
			_ = pc.Close()
			_ = ln.Close()
			return err
		}
	}
	s.running = true
	return nil
}

// Stop closes the sockets and every TCP connection; queries then get an
// ICMP port unreachable (UDP) or a refused connection (TCP), as from a
// resolver that is down. Start serves again on the same address.
func (s *PlainServer) Stop() {
	s.life.Lock()
	defer s.life.Unlock()
	if !s.running {
		return
	}
	s.running = false
	_ = s.udp.Shutdown()
	_ = s.tcp.Shutdown()
	// Shutdown can return before the UDP socket is closed: it and the
	// serving goroutine both close it, and when the goroutine's close
	// comes first, Shutdown's returns at once, as a second close does.
	// A query sent then would land in the dying socket, unanswered and
	// without the ICMP error that tells a client the server is down.
	// ActivateAndServe returns only once its own close is done.
	s.serving.Wait()
}

// Queries returns the queries read so far.
func (s *PlainServer) Queries() []Query {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Query(nil), s.queries...)
}

// Names returns the names of the queries read so far, in order, with
// repeats.
func (s *PlainServer) Names() []string {
	var out []string
	for _, q := range s.Queries() {
		out = append(out, q.Name)
	}
	return out
}

func (s *PlainServer) serveDNS(w dns.ResponseWriter, r *dns.Msg) {
	proto := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		proto = "tcp"
	}
	var from netip.AddrPort
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		from = a.AddrPort()
	case *net.TCPAddr:
		from = a.AddrPort()
	}
	q := Query{Proto: proto, From: from}
	if len(r.Question) > 0 {
		q.Name, q.Type = strings.ToLower(r.Question[0].Name), r.Question[0].Qtype
	}
	s.mu.Lock()
	s.queries = append(s.queries, q)
	s.mu.Unlock()

	if s.Behavior.Drop.Load() {
		return
	}
	if d := time.Duration(s.Behavior.DelayNanos.Load()); d > 0 {
		time.Sleep(d)
	}
	ans := s.handler(r)
	if ans == nil {
		return
	}
	if proto == "udp" && s.Behavior.Truncate.Load() {
		ans.Answer, ans.Ns, ans.Extra = nil, nil, nil
		ans.Truncated = true
		if opt := r.IsEdns0(); opt != nil {
			ans.SetEdns0(opt.UDPSize(), opt.Do())
		}
	}
	if proto == "udp" && s.Behavior.Spoof.Load() {
		s.spoof(w, ans)
	}
	_ = w.WriteMsg(ans)
}

// spoof sends the two decoys of PlainBehavior.Spoof.
func (s *PlainServer) spoof(w dns.ResponseWriter, ans *dns.Msg) {
	decoy := ans.Copy()
	decoy.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: ans.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
		A: net.IPv4(203, 0, 113, 66).To4()}}
	if b, err := decoy.Pack(); err == nil {
		if c, err := net.DialUDP("udp", &net.UDPAddr{IP: s.Addr.Addr().AsSlice()}, w.RemoteAddr().(*net.UDPAddr)); err == nil {
			_, _ = c.Write(b)
			_ = c.Close()
		}
	}
	decoy.Id = ans.Id + 1
	_ = w.WriteMsg(decoy)
}
