//go:build linux

package server

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/netnstest"
	"github.com/miekg/dns"
)

// inNetnsWithoutIPv6 runs f on a thread inside a new network namespace
// whose loopback is up with IPv6 disabled, as in a pod on an IPv4-only
// cluster: 127.0.0.1 exists, ::1 does not. Sockets f creates live in that
// namespace.
func inNetnsWithoutIPv6(t *testing.T, f func() error) {
	t.Helper()
	ns := netnstest.New(t)
	// Disabling IPv6 on lo removes ::1.
	ns.Must(t, "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1")
	ns.Do(t, f)
}

// TestBindNamespaceWithoutIPv6 checks the bind rules where they matter: in
// a namespace without ::1, the default list serves on 127.0.0.1 alone and
// warns, and an explicit list naming ::1 fails to start.
func TestBindNamespaceWithoutIPv6(t *testing.T) {
	// New opens no socket, so the servers can be made here; Start binds, in
	// the namespace.
	logs := &syncBuffer{}
	s := newUnstarted(t, Options{Logger: newTextLogger(logs)})
	explicit := newUnstarted(t, Options{BindAddrs: defaultBindAddrs, BindExplicit: true})
	inNetnsWithoutIPv6(t, func() error {
		if err := s.Start(); err != nil {
			return fmt.Errorf("default list: Start: %w", err)
		}
		defer s.Shutdown(context.Background())
		addrs := s.Addrs()
		if len(addrs) != 2 {
			return fmt.Errorf("default list bound %v, want UDP and TCP on 127.0.0.1", addrs)
		}
		if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "::1") {
			return fmt.Errorf("no warning about ::1 logged:\n%s", logs)
		}
		// The client's socket is made on this thread, in the namespace.
		for _, a := range addrs {
			network, ap := "udp", netip.AddrPort{}
			switch a := a.(type) {
			case *net.UDPAddr:
				ap = a.AddrPort()
			case *net.TCPAddr:
				network, ap = "tcp", a.AddrPort()
			}
			q := newQuery("www.example.", dns.TypeA)
			wire, err := q.Pack()
			if err != nil {
				return err
			}
			raw, err := tryExchange(network, ap, wire)
			if err != nil {
				return err
			}
			r := new(dns.Msg)
			if err := r.Unpack(raw); err != nil || r.Rcode != dns.RcodeSuccess || r.Id != q.Id {
				return fmt.Errorf("%s answer %v (%v)", network, r.MsgHdr, err)
			}
		}

		err := explicit.Start()
		defer explicit.Shutdown(context.Background())
		if err == nil || !strings.Contains(err.Error(), "::1") {
			return fmt.Errorf("explicit list with ::1: Start = %v, want a failure naming ::1", err)
		}
		return nil
	})
}
