//go:build linux

package server

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
	"github.com/miekg/dns"
)

// inNetns runs f on a thread inside a new network namespace whose loopback
// is up (127.0.0.0/8 and ::1), with the extra lo addresses given, so that a
// test may bind wildcard addresses without exposing a port on the host.
func inNetns(t *testing.T, extra []string, f func() error) {
	t.Helper()
	ns := netnstest.New(t)
	for _, a := range extra {
		ns.Must(t, "ip", "addr", "add", a, "dev", "lo", "nodad")
	}
	ns.Do(t, func() error {
		// The kernel finishes adding an address in the background: even
		// with nodad, an IPv6 address stays tentative, without its local
		// route, until a work item runs after `ip` has returned. A
		// datagram sent to it meanwhile is lost, so wait until one makes
		// the round trip.
		for _, a := range extra {
			if err := awaitUsable(netip.MustParsePrefix(a).Addr()); err != nil {
				return err
			}
		}
		return f()
	})
}

// awaitUsable waits until a datagram from the loopback address of a's
// family reaches a, and one from a comes back.
func awaitUsable(a netip.Addr) error {
	lo := netip.IPv6Loopback()
	if a.Is4() {
		lo = netip.MustParseAddr("127.0.0.1")
	}
	deadline := time.Now().Add(ioTimeout)
	for {
		err := roundTrip(lo, a)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("address %s still unusable: %w", a, err)
		}
	}
}

// roundTrip sends a datagram from a socket on from to one on to and back.
func roundTrip(from, to netip.Addr) error {
	srv, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(to, 0)))
	if err != nil {
		return err
	}
	defer srv.Close()
	cl, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, 0)), srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		return err
	}
	defer cl.Close()
	// Each try waits a little for its datagram; the loop bounds the total.
	deadline := time.Now().Add(20 * time.Millisecond)
	_ = srv.SetReadDeadline(deadline)
	_ = cl.SetReadDeadline(deadline)
	buf := make([]byte, 16)
	if _, err := cl.Write([]byte("ping")); err != nil {
		return err
	}
	_, peer, err := srv.ReadFromUDPAddrPort(buf)
	if err != nil {
		return err
	}
	if _, err := srv.WriteToUDPAddrPort([]byte("pong"), peer); err != nil {
		return err
	}
	_, err = cl.Read(buf)
	return err
}

// TestUDPWildcardAnswersFromQueriedAddress binds the unspecified addresses
// and sends queries to an address other than the one the kernel would pick
// as the source of the answer (127.0.0.2, answered toward 127.0.0.1; an
// extra IPv6 address, answered toward ::1). A client only accepts an answer
// from the address it asked (a connected socket, as resolvers use, drops
// the rest; so would conntrack's reverse NAT after an iptables REDIRECT),
// so the answer must leave from the address the query was sent to.
func TestUDPWildcardAnswersFromQueriedAddress(t *testing.T) {
	const extra6 = "fd00:53::53"
	s := newUnstarted(t, Options{
		BindAddrs:    []netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()},
		BindExplicit: true,
		Proto:        "udp",
	})
	inNetns(t, []string{extra6 + "/128"}, func() error {
		if err := s.Start(); err != nil {
			return fmt.Errorf("Start: %w", err)
		}
		defer s.Shutdown(context.Background())
		port := s.Addrs()[0].(*net.UDPAddr).Port
		for _, tc := range []struct{ from, to string }{
			{"127.0.0.1", "127.0.0.2"},
			{"127.0.0.1", "127.0.0.1"},
			{"::1", extra6},
			{"::1", "::1"},
		} {
			// A query for the canary is answered locally, so a lost answer
			// can only be the server's doing.
			if err := askFrom(tc.from, netip.AddrPortFrom(netip.MustParseAddr(tc.to), uint16(port))); err != nil {
				return fmt.Errorf("from %s to %s: %w", tc.from, tc.to, err)
			}
		}
		return nil
	})
}

// askFrom sends the canary query from a UDP socket bound to from and
// connected to to, and checks the answer.
func askFrom(from string, to netip.AddrPort) error {
	local := &net.UDPAddr{IP: net.ParseIP(from)}
	c, err := net.DialUDP("udp", local, net.UDPAddrFromAddrPort(to))
	if err != nil {
		return err
	}
	defer c.Close()
	q := newQuery(CanaryName, dns.TypeTXT)
	wire, err := q.Pack()
	if err != nil {
		return err
	}
	if _, err := c.Write(wire); err != nil {
		return err
	}
	// The answer comes at once or never; a second is ample.
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("no answer: %w", err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil || r.Id != q.Id || len(r.Answer) != 1 {
		return fmt.Errorf("answer %v (%v)", r, err)
	}
	return nil
}
