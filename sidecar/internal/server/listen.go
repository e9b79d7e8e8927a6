package server

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// errPortTaken tells bind that a port picked for Port 0 was free for the
// first listener but not for a later one: worth another try.
var errPortTaken = errors.New("port picked by the kernel is taken on another address")

const bindAttempts = 10

// bind opens every listener. With Port 0 all listeners share the port the
// kernel picks for the first one, as a DNS server's clients expect (a client
// retries a truncated UDP answer over TCP to the same address and port).
func (s *Server) bind() ([]*net.UDPConn, []*net.TCPListener, error) {
	for attempt := 1; ; attempt++ {
		udp, tcp, skipped, err := s.bindOnce()
		if errors.Is(err, errPortTaken) && attempt < bindAttempts {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		for _, sk := range skipped {
			s.log.Warn("skipping a default bind address this host lacks", "addr", sk.addr, "err", sk.err)
		}
		return udp, tcp, nil
	}
}

type skippedAddr struct {
	addr netip.Addr
	err  error
}

func (s *Server) bindOnce() (udp []*net.UDPConn, tcp []*net.TCPListener, skipped []skippedAddr, err error) {
	closeAll := func() {
		for _, c := range udp {
			_ = c.Close()
		}
		for _, l := range tcp {
			_ = l.Close()
		}
	}
	port := s.opts.Port
	wantUDP := s.opts.Proto != "tcp"
	wantTCP := s.opts.Proto != "udp"
	for _, a := range s.opts.BindAddrs {
		a = a.Unmap()
		family := "6"
		if a.Is4() {
			family = "4"
		}
		var u *net.UDPConn
		var l *net.TCPListener
		var lerr error
		if wantUDP {
			u, lerr = net.ListenUDP("udp"+family, net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, uint16(port))))
			if lerr == nil && port == 0 {
				port = int(u.LocalAddr().(*net.UDPAddr).Port)
			}
			if lerr == nil && a.IsUnspecified() {
				// Answers must leave from the address each query was
				// sent to (pktinfo_linux.go).
				if err := enablePktinfo(u, !a.Is4()); err != nil {
					_ = u.Close()
					closeAll()
					return nil, nil, nil, fmt.Errorf("listening on %s port %d: reading destination addresses: %w", a, port, err)
				}
			}
		}
		if lerr == nil && wantTCP {
			l, lerr = net.ListenTCP("tcp"+family, net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, uint16(port))))
			if lerr == nil && port == 0 {
				port = l.Addr().(*net.TCPAddr).Port
			}
		}
		if lerr != nil {
			if u != nil {
				_ = u.Close()
			}
			if !s.opts.BindExplicit && addressMissing(lerr) {
				skipped = append(skipped, skippedAddr{a, lerr})
				continue
			}
			closeAll()
			if s.opts.Port == 0 && port != 0 && errors.Is(lerr, syscall.EADDRINUSE) {
				return nil, nil, nil, errPortTaken
			}
			return nil, nil, nil, fmt.Errorf("listening on %s port %d: %w", a, port, lerr)
		}
		if u != nil {
			// A larger receive buffer absorbs bursts; the kernel caps it at
			// net.core.rmem_max, and failing to raise it is harmless.
			_ = u.SetReadBuffer(1 << 21)
			udp = append(udp, u)
		}
		if l != nil {
			tcp = append(tcp, l)
		}
	}
	if len(udp)+len(tcp) == 0 {
		return nil, nil, nil, fmt.Errorf("none of the bind addresses %v exists on this host", s.opts.BindAddrs)
	}
	return udp, tcp, skipped, nil
}

// addressMissing tells whether a bind failed because the host lacks the
// address or its whole address family (IPv6 disabled), rather than because
// the port is taken or not allowed.
func addressMissing(err error) bool {
	return errors.Is(err, syscall.EADDRNOTAVAIL) ||
		errors.Is(err, syscall.EAFNOSUPPORT) ||
		errors.Is(err, syscall.EPROTONOSUPPORT)
}
