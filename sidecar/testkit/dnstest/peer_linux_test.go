package dnstest

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// peerHolds follows the client's end of a connection as the kernel sees
// it, before the server reads anything.
func TestPeerHolds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pair := func() (client, server net.Conn) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(); s.Close() })
		return c, s
	}
	// Each wait: the FIN or reset crosses loopback within the close call
	// as a rule, but a busy machine may leave it to ksoftirqd.
	released := func(what string, s net.Conn) {
		t.Helper()
		testkit.WaitFor(t, what, 5*time.Second, func() error {
			if peerHolds(s) {
				return errors.New("still counted as held")
			}
			return nil
		})
	}

	c, s := pair()
	if !peerHolds(s) {
		t.Error("an established connection counted as released by the client")
	}
	c.Close()
	released("a connection the client closed (FIN) counted as released", s)

	c, s = pair()
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	released("a connection the client reset counted as released", s)

	c, s = pair()
	s.(*net.TCPConn).CloseWrite()
	if !peerHolds(s) {
		t.Error("a connection this side half-closed counted as released, though the client holds it")
	}
	s.Close()
	if peerHolds(s) {
		t.Error("a connection this side closed counted as held")
	}
	_ = c
}
